package contract

import "time"

// Draft is where a job sent through a draft (the draft delivery mode) is:
// what a restarted worker needs to resume rather than start over, and to
// tell after an ambiguous send whether the mail went out. It lives in the
// job's state (JobState.Draft).
type Draft struct {
	// ID is the draft's immutable id ("" while it is being created) (created with Prefer: IdType="ImmutableId",
	// https://learn.microsoft.com/graph/outlook-immutable-id): the same id
	// names the Sent Items copy after the send.
	ID string `json:"id"`
	// Mailbox is the mailbox the draft is in (the job's from address).
	Mailbox string `json:"mailbox"`
	// InternetMessageID is the Message-ID the mail is sent with; support
	// finds it in Exchange message trace by it.
	InternetMessageID string    `json:"internetMessageId,omitempty"`
	CreatedAt         time.Time `json:"createdAt"`
	// Done counts the attachments added after the draft was created
	// (one POST each, or an upload session), in the job's order.
	Done int `json:"done,omitempty"`
	// Upload is the upload session in progress for attachment Done, if any.
	Upload *Upload `json:"upload,omitempty"`
	// SendAt is when a send of the draft was first attempted: from then on
	// the mail may have gone out, and a new attempt looks the message up
	// before it sends.
	SendAt *time.Time `json:"sendAt,omitempty"`
}

// Upload is an upload session in progress. URL is pre-authenticated (it
// carries a token): it is never logged, shown or put in an event.
type Upload struct {
	URL     string    `json:"url"`
	Expires time.Time `json:"expires"`
	Next    int64     `json:"next"` // the next byte the session expects
}
