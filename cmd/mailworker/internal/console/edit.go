package console

// Edit and replay: the editor, and the fixed job checked by the worker's
// own rules before the support service replays it.

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strings"

	"github.com/mailworker/mailworker/queue"
	"github.com/mailworker/mailworker/queue/contract"
	"github.com/mailworker/mailworker/support"
)

// editFields are the job fields the editor shows as their own inputs; the
// rest of the job is edited as JSON in "other".
var editFields = []string{"from", "to", "cc", "bcc", "replyTo", "subject", "text", "html"}

var listFields = map[string]bool{"to": true, "cc": true, "bcc": true, "replyTo": true}

type editData struct {
	ID, Profile string
	// Reason and Original are why the job was dead-lettered, the error
	// masked as on the job page: the editor keeps them in sight.
	Reason   contract.Reason
	Original string
	Values   map[string]string
	Errors   map[string]string
	CSRF     string
}

func (s *Server) handleEdit(w http.ResponseWriter, r *http.Request, sess *session) {
	dl, id, ok := s.deadLetterOf(w, r, sess, "This job is not in the dead-letter queue.")
	if !ok {
		return
	}
	d := editData{ID: id, Profile: dl.Profile, Values: map[string]string{}, Errors: map[string]string{}, CSRF: sess.CSRF,
		Reason: dl.Reason, Original: support.MaskText(dl.Error, dl.From)}
	f := r.PostForm
	if f.Get("op") != "replay" {
		// Opening the editor shows the content: audited as a reveal.
		if err := s.desk.Reveal(r.Context(), who(sess), dl.Profile, id, "opened the editor"); err != nil {
			s.fail(w, r, sess, err)
			return
		}
		fillForm(d.Values, dl.Body)
		s.render(w, http.StatusOK, "edit", s.view(sess, "Edit "+id, "", d))
		return
	}
	for _, k := range append(editFields, "other") {
		d.Values[k] = f.Get(k)
	}
	body, field, msg := s.buildJob(dl, d.Values)
	if field != "" {
		d.Errors[field] = msg
		s.render(w, http.StatusUnprocessableEntity, "edit", s.view(sess, "Edit "+id, "", d))
		return
	}
	_, err := s.desk.ReplayEdited(r.Context(), who(sess), dl.Profile, id, body)
	s.countsChanged()
	if err != nil {
		var ie *contract.InvalidError
		if errors.As(err, &ie) {
			d.Errors[formField(ie.Field)] = ie.Error()
			s.render(w, http.StatusUnprocessableEntity, "edit", s.view(sess, "Edit "+id, "", d))
			return
		}
		s.fail(w, r, sess, err)
		return
	}
	s.done(r, sess, queue.AuditReplayEdited, dl.Profile, id, 1)
	http.Redirect(w, r, jobURL(dl.Profile, id)+"?done=replayed", http.StatusSeeOther)
}

// fillForm splits a job body into the editor's inputs.
func fillForm(vals map[string]string, body []byte) {
	var m map[string]json.RawMessage
	if json.Unmarshal(body, &m) != nil {
		vals["other"] = string(body)
		return
	}
	for _, k := range editFields {
		raw, ok := m[k]
		if !ok {
			continue
		}
		delete(m, k)
		if listFields[k] {
			var l []string
			if json.Unmarshal(raw, &l) == nil {
				vals[k] = strings.Join(l, "\n")
				continue
			}
		} else {
			var str string
			if json.Unmarshal(raw, &str) == nil {
				vals[k] = str
				continue
			}
		}
		m[k] = raw // not the expected type: leave it to "other"
	}
	delete(m, "id")
	if len(m) > 0 {
		b, _ := json.MarshalIndent(m, "", "  ")
		vals["other"] = string(b)
	}
}

// buildJob assembles the edited job and validates it with the worker's own
// decoder (contract.DecodeJob: the rules a job is dead-lettered by) and the
// profile's approved senders. It returns the body, or the form field at
// fault and why. (What changed is the support service's to record.)
func (s *Server) buildJob(dl contract.DeadLetter, vals map[string]string) (body []byte, field, msg string) {
	m := map[string]any{}
	if o := strings.TrimSpace(vals["other"]); o != "" {
		if err := json.Unmarshal([]byte(o), &m); err != nil {
			return nil, "other", "not a JSON object: " + err.Error()
		}
	}
	for _, k := range editFields {
		v := vals[k]
		if listFields[k] {
			var l []string
			for _, line := range strings.Split(v, "\n") {
				if line = strings.TrimSpace(line); line != "" {
					l = append(l, line)
				}
			}
			if len(l) > 0 {
				m[k] = l
			}
		} else if strings.TrimSpace(v) != "" {
			if k == "from" {
				v = strings.TrimSpace(v)
			}
			m[k] = v
		}
	}
	m["id"] = dl.JobID
	body, err := json.Marshal(m)
	if err != nil {
		return nil, "other", err.Error()
	}
	j, err := contract.DecodeJob(body)
	if err != nil {
		var ie *contract.InvalidError
		if errors.As(err, &ie) {
			return nil, formField(ie.Field), ie.Error()
		}
		return nil, "other", err.Error()
	}
	if allowed, ok := s.cfg.AllowedSenders[dl.Profile]; ok {
		_, addr, _ := contract.ParseAddress(j.From)
		if !slices.ContainsFunc(allowed, func(a string) bool { return strings.EqualFold(a, addr) }) {
			return nil, "from", fmt.Sprintf("from: %s is not an approved sender of profile %s", addr, dl.Profile)
		}
	}
	return body, "", ""
}

// formField maps a validation error's JSON path (to[2], attachments[0].name)
// to the editor input that holds it.
func formField(path string) string {
	head := path
	if i := strings.IndexAny(head, "[."); i >= 0 {
		head = head[:i]
	}
	if slices.Contains(editFields, head) {
		return head
	}
	return "other"
}
