package graphtest

import (
	"strings"
	"testing"
)

func TestParseFaultSpec(t *testing.T) {
	fs, err := ParseFaultSpec("sendMail=429:0.2,503:0.1")
	if err != nil || fs.Mailbox != "" || len(fs.Faults) != 2 || fs.Faults[0].Status != 429 || fs.Faults[0].RetryAfter == "" ||
		fs.Faults[0].Probability != 0.2 || fs.Faults[1].Status != 503 || fs.Faults[1].Probability != 0.1 {
		t.Fatalf("ParseFaultSpec = %+v, %v", fs, err)
	}
	fs, err = ParseFaultSpec("sendMail@Billing@Contoso.com=accept504")
	if err != nil || fs.Mailbox != "billing@contoso.com" || !fs.Faults[0].AcceptThenFail || fs.Faults[0].Probability != 1 {
		t.Fatalf("a mailbox's spec = %+v, %v", fs, err)
	}
	for spec, want := range map[string]string{
		"sendMail":                 "want sendMail",
		"createDraft=429":          "not a call",
		"sendMail=418":             "unknown kind",
		"sendMail=429:2":           "probability",
		"sendMail=429:0":           "probability",
		"sendMail=429:0.6,503:0.5": "add up to 1.10",
	} {
		if _, err := ParseFaultSpec(spec); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%q: %v, want an error with %q", spec, err, want)
		}
	}
}

// TestFaultMixShares: each fault of a mix takes its own share of draws, the
// rest goes through; a mailbox's mix is used before the every-mailbox one.
func TestFaultMixShares(t *testing.T) {
	s := &Server{}
	all, _ := ParseFaultSpec("sendMail=429:0.2,503:0.1")
	one, _ := ParseFaultSpec("sendMail@a@x.com=403")
	s.SetFaultSpec(all)
	s.SetFaultSpec(one)
	counts := map[int]int{}
	const n = 20000
	for range n {
		if f := s.mixFaultLocked("b@x.com"); f != nil {
			counts[f.Status]++
		} else {
			counts[0]++
		}
	}
	for status, share := range map[int]float64{429: 0.2, 503: 0.1, 0: 0.7} {
		if got := float64(counts[status]) / n; got < share-0.03 || got > share+0.03 {
			t.Errorf("status %d: %.3f of draws, want about %.1f", status, got, share)
		}
	}
	if f := s.mixFaultLocked("a@x.com"); f == nil || f.Status != 403 {
		t.Errorf("the mailbox's own mix: %+v", f)
	}
	s.ClearFaultSpecs()
	if f := s.mixFaultLocked("a@x.com"); f != nil {
		t.Errorf("after ClearFaultSpecs: %+v", f)
	}
}
