package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/url"
	"os"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/rs/zerolog"

	"github.com/mailworker/mailworker/queue"
	"github.com/mailworker/mailworker/queue/contract"
	"github.com/mailworker/mailworker/support"
)

// Support's changes to the dead-letter queue (replay, purge) and to the
// suppression list (unsuppress) go through the
// worker: the support NATS user may only send requests on
// mail.admin.<actor>.<action> (its own actor token, enforced by the server's
// permissions) and read the DLQ, status and job state; the worker, which holds
// the JetStream permissions, carries the action out and records it in
// MAIL_AUDIT (who, what, when) before it answers. See deploy/nats/accounts.conf.
const (
	adminPrefix = "mail.admin."
	adminQueue  = "mailworker-admin"
)

// adminRequest is the body of a mail.admin.<actor>.<action> request.
type adminRequest struct {
	Profile string          `json:"profile,omitempty"`
	JobID   string          `json:"jobId,omitempty"`
	Reason  contract.Reason `json:"reason,omitempty"`
	All     bool            `json:"all,omitempty"`
	// Body replaces the job's body on replay (replay_edited).
	Body []byte `json:"body,omitempty"`
	// Key is the suppressed address's key (queue.RecipientKey) for
	// unsuppress: the address itself never travels.
	Key string `json:"key,omitempty"`
}

// adminReply answers an admin request.
type adminReply struct {
	Count int    `json:"count"`
	Error string `json:"error,omitempty"`
	// NotFound: the job is not in the dead-letter queue.
	NotFound bool `json:"notFound,omitempty"`
}

// adminService executes support's recorded actions.
type adminService struct {
	q   *queue.Queue
	log zerolog.Logger
}

// serveAdmin subscribes the worker to admin requests (one replica answers
// each). The subscription ends with the connection.
func serveAdmin(nc *nats.Conn, q *queue.Queue, log zerolog.Logger) (*nats.Subscription, error) {
	s := &adminService{q: q, log: log}
	sub, err := nc.QueueSubscribe(adminPrefix+"*.*", adminQueue, s.handle)
	if err != nil {
		return nil, fmt.Errorf("subscribe to %s*.*: %w", adminPrefix, err)
	}
	return sub, nil
}

func (s *adminService) handle(m *nats.Msg) {
	actor, action, _ := strings.Cut(strings.TrimPrefix(m.Subject, adminPrefix), ".")
	var req adminRequest
	reply := adminReply{}
	if err := json.Unmarshal(m.Data, &req); err != nil {
		reply.Error = "invalid admin request: " + err.Error()
	} else {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		reply = runAdmin(ctx, s.q, actor, "cli", action, req)
		cancel()
	}
	ev := s.log.Info()
	if reply.Error != "" {
		ev = s.log.Warn().Str("error", reply.Error)
	}
	ev.Str("actor", actor).Str("action", action).Str("profile", req.Profile).Str("jobId", req.JobID).
		Int("count", reply.Count).Msg("support action")
	b, _ := json.Marshal(reply)
	_ = m.Respond(b)
}

// runAdmin carries out one support action on q through the support service
// (package support: the console calls the same one), which records it in
// MAIL_AUDIT before it acts, one record per job replayed or purged. It is
// used by the worker's admin service and, for a user that holds the
// JetStream permissions itself, by the CLI directly.
func runAdmin(ctx context.Context, q *queue.Queue, actor, via, action string, req adminRequest) adminReply {
	fail := func(n int, err error) adminReply {
		return adminReply{Count: n, Error: err.Error(), NotFound: errors.Is(err, queue.ErrNotInDLQ) || errors.Is(err, support.ErrNotSuppressed)}
	}
	if actor == "" {
		return fail(0, errors.New("no actor"))
	}
	desk := support.New(q, support.Options{})
	who := support.Who{Actor: actor, Via: via}
	query := queue.DLQQuery{Profile: req.Profile, Reason: req.Reason, JobID: req.JobID}
	if query.Reason != "" && !query.Reason.Valid() {
		return fail(0, fmt.Errorf("unknown reason %q", query.Reason))
	}
	switch action {
	case "replay":
		switch {
		case req.All:
			query.JobID = ""
			n, err := desk.ReplayMatching(ctx, who, query, "replay --all")
			if err != nil {
				return fail(n, err)
			}
			return adminReply{Count: n}
		case req.Body != nil:
			if _, err := desk.ReplayEdited(ctx, who, req.Profile, req.JobID, req.Body); err != nil {
				return fail(0, err)
			}
		default:
			if _, err := desk.Replay(ctx, who, req.Profile, req.JobID, ""); err != nil {
				return fail(0, err)
			}
		}
		return adminReply{Count: 1}
	case "purge":
		n, err := desk.Purge(ctx, who, query, "")
		if err != nil {
			return fail(n, err)
		}
		return adminReply{Count: n}
	case "unsuppress":
		if req.Profile == "" || req.Key == "" {
			return fail(0, errors.New("unsuppress: profile and key are required"))
		}
		if err := desk.Unsuppress(ctx, who, req.Profile, req.Key, ""); err != nil {
			return fail(0, err)
		}
		return adminReply{Count: 1}
	default:
		return fail(0, fmt.Errorf("unknown action %q (replay, purge, unsuppress)", action))
	}
}

// adminActor is who the CLI acts as: the NATS user of its configuration
// (nats.user, or the user of nats.url), else MAILWORKER_ACTOR, else the OS
// user. Through the worker, the server's permissions bind the NATS user to
// its actor token; the fallbacks only apply to a direct action by a user
// holding the JetStream permissions itself.
func adminActor(cfg NATSConfig, env []string) string {
	actor := cfg.User
	if actor == "" {
		if u, err := url.Parse(strings.Split(cfg.URL, ",")[0]); err == nil && u.User != nil {
			actor = u.User.Username()
		}
	}
	if actor == "" {
		actor = envOr(env, "MAILWORKER_ACTOR", "")
	}
	if actor == "" {
		actor = os.Getenv("USER")
	}
	clean := strings.Map(func(r rune) rune {
		if r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-' || r == '_' {
			return r
		}
		return '_'
	}, actor)
	if clean == "" {
		clean = "cli"
	}
	return clean
}

// admin runs a support action: through the worker when one answers on
// mail.admin.<actor>.<action>, else directly (a user with the JetStream
// permissions, e.g. an operator on a dev server). Either way it is recorded in
// MAIL_AUDIT.
func (c *cli) admin(ctx context.Context, action string, req adminRequest) (adminReply, error) {
	cfg, err := c.config()
	if err != nil {
		return adminReply{}, err
	}
	nc, js, err := c.dial()
	if err != nil {
		return adminReply{}, err
	}
	defer nc.Close()
	actor := adminActor(cfg.NATS, c.env)
	b, err := json.Marshal(req)
	if err != nil {
		return adminReply{}, err
	}
	rctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	m, err := nc.RequestWithContext(rctx, adminPrefix+actor+"."+action, b)
	switch {
	case err == nil:
		var reply adminReply
		if err := json.Unmarshal(m.Data, &reply); err != nil {
			return adminReply{}, fmt.Errorf("admin reply: %w", err)
		}
		return reply, nil
	case !errors.Is(err, nats.ErrNoResponders):
		return adminReply{}, fmt.Errorf("%s through the worker (mail.admin.%s.%s): %w", action, actor, action, err)
	}
	q, err := queue.Open(ctx, js)
	if err != nil {
		return adminReply{}, fmt.Errorf("no worker answered on mail.admin.%s.%s, and the direct path failed: %w", actor, action, err)
	}
	return runAdmin(ctx, q, actor, "cli", action, req), nil
}
