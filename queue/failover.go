package queue

import "time"

// PullHeartbeat is the idle heartbeat the worker's pull requests ask of the
// consumer leader (jetstream.PullHeartbeat). nats.go takes a pull request
// as lost, and makes a new one, when two heartbeats in a row are missing
// (nats.go jetstream/pull.go: hbMonitor.Reset(2 * Heartbeat)).
//
// The default is half of the 30 s pull expiry, 15 s: a pull request held
// by a consumer leader that is paused (SIGSTOP, a long GC or I/O stall) or
// dies is noticed only after 30 s, and nothing is fetched meanwhile,
// although a new leader is elected within seconds (issue 19, defect 2: 25
// to 30 s without sends). A leader that steps down cleanly answers its
// pull requests with "409 Leadership Change" and the client pulls again at
// once; a paused or dead one cannot, and only the heartbeat tells. At 2 s
// a lost pull request is replaced within about 4 s. The cost is one empty
// status message every 2 s per idle pull request (one per worker replica).
const PullHeartbeat = 2 * time.Second
