package support

import (
	"bytes"
	"encoding/json"
	"fmt"
	"regexp"
	"sort"
	"strings"

	"github.com/mailworker/mailworker/queue"
	"github.com/mailworker/mailworker/queue/contract"
)

// MaskAddr hides a mailbox but its first letter and domain:
// "Jane <jane@contoso.com>" → "j•••@contoso.com".
func MaskAddr(a string) string {
	_, addr, err := contract.ParseAddress(a)
	if err != nil {
		addr = a
	}
	local, domain, ok := strings.Cut(addr, "@")
	if !ok || local == "" {
		return "•••"
	}
	r := []rune(local)
	return string(r[0]) + "•••@" + domain
}

var reAddr = regexp.MustCompile(`[A-Za-z0-9._%+'-]+@[A-Za-z0-9-]+(\.[A-Za-z0-9-]+)*`)

// MaskText masks the mailboxes in a free text (an error message may quote a
// recipient), except keep (the sender, shown anyway).
func MaskText(text, keep string) string {
	keep = strings.ToLower(strings.TrimSpace(senderAddress(keep)))
	return reAddr.ReplaceAllStringFunc(text, func(a string) string {
		if keep != "" && strings.EqualFold(a, keep) {
			return a
		}
		return MaskAddr(a)
	})
}

// addressFields hold recipients: masked address by address.
var addressFields = map[string]bool{"to": true, "cc": true, "bcc": true, "replyTo": true}

// Diff lists the top-level fields of the job after that differ from before
// (id aside), each value masked as the console's job page shows it: the
// sender and the subject as they are, recipients masked address by address
// ("j•••@contoso.com"), bodies by their size, attachments by count and
// size, any other field as compact JSON with its mailboxes masked. keep is
// the original sender (shown unmasked in free text).
func Diff(before, after []byte, keep string) []queue.AuditChange {
	var b, a map[string]json.RawMessage
	_ = json.Unmarshal(before, &b)
	_ = json.Unmarshal(after, &a)
	keys := map[string]bool{}
	for k := range b {
		keys[k] = true
	}
	for k := range a {
		keys[k] = true
	}
	var out []queue.AuditChange
	for k := range keys {
		if k == "id" || bytes.Equal(compact(b[k]), compact(a[k])) {
			continue
		}
		out = append(out, queue.AuditChange{Field: k, Before: maskField(k, b[k], keep), After: maskField(k, a[k], keep)})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Field < out[j].Field })
	return out
}

func maskField(k string, raw json.RawMessage, keep string) string {
	if len(raw) == 0 || string(raw) == "null" {
		return ""
	}
	switch {
	case addressFields[k]:
		var l []string
		if json.Unmarshal(raw, &l) != nil {
			var one string
			if json.Unmarshal(raw, &one) != nil {
				return MaskText(string(compact(raw)), "")
			}
			l = []string{one}
		}
		for i, a := range l {
			l[i] = MaskAddr(a)
		}
		return strings.Join(l, ", ")
	case k == "from" || k == "subject":
		var v string
		if json.Unmarshal(raw, &v) == nil {
			return v
		}
	case k == "text" || k == "html":
		var v string
		if json.Unmarshal(raw, &v) == nil {
			return fmt.Sprintf("%d bytes", len(v))
		}
	case k == "attachments":
		var l []json.RawMessage
		if json.Unmarshal(raw, &l) == nil {
			return fmt.Sprintf("%d attachment(s), %d bytes of JSON", len(l), len(raw))
		}
	}
	return MaskText(string(compact(raw)), keep)
}

func compact(b []byte) []byte {
	var buf bytes.Buffer
	if json.Compact(&buf, b) != nil {
		return b
	}
	return buf.Bytes()
}
