package contract

import "time"

// DeadLetter is one record of MAIL_DLQ: the original job bytes (Body) and the
// facts of the failure (stored as message headers).
type DeadLetter struct {
	JobID, Profile string
	Reason         Reason
	Error          string
	Attempts       int
	FailedAt       time.Time
	GraphRequestID string
	// GraphCalls are the Graph calls of the last attempt, oldest first: what
	// a Microsoft support case or a message trace needs to find them.
	GraphCalls []GraphCall
	// Ambiguous: a send of this job may have delivered the mail although no
	// 202 was seen (a timeout, a 5xx, a worker that stopped mid-call). A
	// replay keeps it: the next `sent` event says possibleDuplicate.
	Ambiguous  bool
	Generation int
	Body       []byte
	// Truncated is the job's original size when Body holds only its first
	// bytes (the job was too large to be stored whole next to the failure
	// headers, near the server's max_payload); 0 when Body is the whole job.
	Truncated     int
	Seq           uint64 // stream sequence (when read)
	From, Subject string // best-effort parse of Body when read
}
