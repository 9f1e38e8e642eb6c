package graphmail

import (
	"net/http"
	"strings"

	"github.com/mailworker/mailworker/queue/contract"
)

// The Graph calls, as SendError.Op names them. Their values appear in error
// text (SendError.Error: "graphmail: createDraft 403 …"): keep them.
const (
	OpSendMail      = ""                    // POST /users/{from}/sendMail
	OpCreateDraft   = "createDraft"         // POST /users/{from}/messages
	OpAddAttachment = "addAttachment"       // POST …/messages/{id}/attachments
	OpCreateSession = "createUploadSession" // POST …/attachments/createUploadSession
	OpUpload        = "upload"              // PUT/GET the upload session's pre-authenticated URL
	OpSendDraft     = "send"                // POST …/messages/{id}/send
	OpGetMessage    = "get"                 // the look-up by id after a send that may have gone out
	OpFindSent      = "findSent"            // the Sent Items search by internetMessageId after such a send
	OpDeleteMessage = "delete"              // DELETE …/messages/{id}
)

// sends reports whether op is a call that can deliver mail: only its
// failure can be ambiguous, and only it counts against a mailbox's
// recipient budget.
func sends(op string) bool { return op == OpSendMail || op == OpSendDraft }

// Verdict is what one answer to a Graph call means.
type Verdict struct {
	Class  contract.Class
	Reason contract.Reason
	// Ambiguous: the mail may have been sent although no 2xx was seen.
	Ambiguous bool
	// Hint is appended to Graph's message: what to do about it.
	Hint string
}

// rule is one row of the classification table. A row matches a call when
// each field it sets matches: ops (nil: any call), the status (0: any; a
// multiple of 100 with any true: that class of statuses), the Graph error
// code (case-insensitive) and a fragment of the message (lower case).
type rule struct {
	ops    []string
	status int
	any    bool
	code   string
	msg    string
	// The answer.
	class     contract.Class
	reason    contract.Reason
	ambiguous bool // for a call that sends: the mail may have gone out
	hint      string
}

// draftOps are the calls of the draft flow (every call but sendMail).
var draftOps = []string{OpCreateDraft, OpAddAttachment, OpCreateSession, OpUpload, OpSendDraft, OpGetMessage, OpFindSent, OpDeleteMessage}

// roleHint names the role that the draft flow's calls other than the send
// need (the send needs Mail.Send, the upload URL no role at all).
const roleHint = "The draft delivery mode needs the Exchange role \"Application Mail.ReadWrite\" in the mailbox's management scope."

// rules is the one classification table: the first row that matches
// decides. Its sources are in docs/microsoft.md and the runbook's
// troubleshooting table; TestClassify runs every row.
var rules = []rule{
	// By code first: these mean the same whatever status carries them.
	// A draft that is gone (sent, or deleted) is not a missing mailbox: the
	// next attempt finds out which; after the send it may have been sent.
	{ops: draftOps, status: http.StatusNotFound, code: "ErrorItemNotFound", class: contract.ClassRetryable, ambiguous: true},
	{code: "ErrorMessageSizeExceeded", class: contract.ClassPermanent, reason: contract.ReasonMessageTooLarge},
	// The mailbox is on-premises, inactive or not provisioned for REST.
	{code: "MailboxNotEnabledForRESTAPI", class: contract.ClassPermanent, reason: contract.ReasonMailboxNotFound},
	// The sending mailbox is over its storage quota (sendMail saves the
	// message in it): it heals when space is freed, so bounded retries.
	{code: "ErrorQuotaExceeded", class: contract.ClassRetryable},
	// REST/OData access is turned off for the mailbox or organisation (an
	// Exchange setting, not the RBAC scope): waiting for RBAC will not heal it.
	{code: "ErrorAccessDenied", msg: "access to odata is disabled", class: contract.ClassPermanent, reason: contract.ReasonAccessDenied},
	// The URL names an API this Graph does not have (400 BadRequest "Resource
	// not found for the segment '…'.", microsoft-graph-docs#4900, #21648), e.g.
	// createUploadSession in the US Government clouds: not a missing mailbox.
	{ops: draftOps, status: 400, msg: "resource not found for the segment", class: contract.ClassPermanent, reason: contract.ReasonGraphRejected, hint: segmentHint},
	{ops: draftOps, status: 404, msg: "resource not found for the segment", class: contract.ClassPermanent, reason: contract.ReasonGraphRejected, hint: segmentHint},
	{status: 400, msg: "resource not found for the segment", class: contract.ClassPermanent, reason: contract.ReasonGraphRejected},
	{status: 404, msg: "resource not found for the segment", class: contract.ClassPermanent, reason: contract.ReasonGraphRejected},
	// Graph's 400 form of the 4 MB request cap ("Maximum request length exceeded.").
	{status: 400, msg: "maximum request length", class: contract.ClassPermanent, reason: contract.ReasonMessageTooLarge},
	{status: 400, code: "ErrorInvalidRecipients", class: contract.ClassPermanent, reason: contract.ReasonRecipientInvalid},
	{status: 400, class: contract.ClassPermanent, reason: contract.ReasonGraphRejected},
	{status: 401, class: contract.ClassRetryable, reason: contract.ReasonAuthFailed},
	// Exchange RBAC for Applications changes take 30 min to 2 h: bounded
	// retries by the worker.
	{ops: []string{OpCreateDraft, OpAddAttachment, OpCreateSession, OpGetMessage, OpFindSent, OpDeleteMessage}, status: 403, code: "ErrorAccessDenied",
		class: contract.ClassRetryable, reason: contract.ReasonAccessDenied, hint: roleHint},
	{status: 403, code: "ErrorAccessDenied", class: contract.ClassRetryable, reason: contract.ReasonAccessDenied},
	{ops: []string{OpCreateDraft, OpAddAttachment, OpCreateSession, OpGetMessage, OpFindSent, OpDeleteMessage}, status: 403,
		class: contract.ClassPermanent, reason: contract.ReasonAccessDenied, hint: roleHint},
	{status: 403, class: contract.ClassPermanent, reason: contract.ReasonAccessDenied},
	{status: 404, class: contract.ClassPermanent, reason: contract.ReasonMailboxNotFound},
	{status: 408, class: contract.ClassRetryable},
	{status: 413, class: contract.ClassPermanent, reason: contract.ReasonMessageTooLarge},
	// Throttled: spends no attempt, the mailbox waits Retry-After. Per
	// Microsoft staff a 429 is not strictly proof of non-delivery
	// (docs/microsoft.md), so it counts against the recipient budget (the
	// worker's mayHaveReachedExchange), but it is not ambiguous.
	{status: 429, class: contract.ClassThrottled},
	// A 5xx after the request was written: the mail may have been sent.
	{status: 500, any: true, class: contract.ClassRetryable, ambiguous: true},
	// Other 4xx, and 1xx/3xx which Graph does not send for these calls.
	{class: contract.ClassPermanent, reason: contract.ReasonGraphRejected},
}

const segmentHint = "This cloud's Graph does not offer the call (%s): createUploadSession, which attachments of 3 MB or more need, is not available in the US Government clouds (L4, L5); such a profile must use deliveryMode sendMail."

func (r *rule) matches(op string, status int, code, lowerMsg string) bool {
	if r.ops != nil && !contains(r.ops, op) {
		return false
	}
	switch {
	case r.status == 0:
	case r.any && status/100 != r.status/100:
		return false
	case !r.any && status != r.status:
		return false
	}
	if r.code != "" && !strings.EqualFold(r.code, code) {
		return false
	}
	return r.msg == "" || strings.Contains(lowerMsg, r.msg)
}

func contains(ops []string, op string) bool {
	for _, o := range ops {
		if o == op {
			return true
		}
	}
	return false
}

// Classify is the one place that says what an answer to a Graph call means:
// op names the call (OpSendMail, OpCreateDraft, …), status the HTTP status
// (0: no response), code and message Graph's error. wrote says whether the
// whole request went out on the wire. A 2xx is the zero Verdict.
//
// Only a call that sends mail (sendMail, a draft's send) can be ambiguous:
// on any 5xx (whatever its code), on a 404 ErrorItemNotFound of a draft's
// send, and when no answer came (or a 2xx could not be read) after the
// request was written.
func Classify(op string, status int, code, message string, wrote bool) Verdict {
	switch {
	case status >= 200 && status < 300:
		return Verdict{}
	case status == 0:
		return Verdict{Class: contract.ClassRetryable, Ambiguous: wrote && sends(op)}
	}
	lower := strings.ToLower(message)
	for i := range rules {
		r := &rules[i]
		if !r.matches(op, status, code, lower) {
			continue
		}
		// A 5xx leaves open whether a send went out, whatever its code says.
		v := Verdict{Class: r.class, Reason: r.reason, Ambiguous: sends(op) && (r.ambiguous || status >= 500), Hint: r.hint}
		v.Hint = strings.Replace(v.Hint, "%s", op, 1) // the segment hint names the call
		return v
	}
	return Verdict{Class: contract.ClassPermanent, Reason: contract.ReasonGraphRejected}
}
