package contract

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// badJobCase is one entry of testdata/badjobs/expect.json.
type badJobCase struct {
	Decode  string `json:"decode"`
	Field   string `json:"field"`
	Profile string `json:"profile"`
	Reason  Reason `json:"reason"`
	Message string `json:"message"`
}

// TestBadJobsCorpus decodes every file of the bad-input corpus and checks the
// InvalidError (field and rule) it must yield; the end-to-end run through a
// worker is cmd/mailworker's TestReliabilityBadInput.
func TestBadJobsCorpus(t *testing.T) {
	raw, err := os.ReadFile("testdata/badjobs/expect.json")
	if err != nil {
		t.Fatal(err)
	}
	var cases map[string]json.RawMessage
	if err := json.Unmarshal(raw, &cases); err != nil {
		t.Fatal(err)
	}
	files, _ := filepath.Glob("testdata/badjobs/*.json")
	seen := 0
	for _, f := range files {
		name := filepath.Base(f)
		if name == "expect.json" {
			continue
		}
		seen++
		t.Run(strings.TrimSuffix(name, ".json"), func(t *testing.T) {
			var c badJobCase
			if err := json.Unmarshal(cases[name], &c); err != nil || c.Reason == "" {
				t.Fatalf("no expectation for %s in expect.json", name)
			}
			data, err := os.ReadFile(f)
			if err != nil {
				t.Fatal(err)
			}
			_, err = DecodeJob(data)
			if c.Decode == "" {
				if err != nil {
					t.Fatalf("DecodeJob: %v, want it to decode (the worker rejects it with %s)", err, c.Reason)
				}
				return
			}
			var inv *InvalidError
			if !errors.As(err, &inv) {
				t.Fatalf("DecodeJob: %v, want an *InvalidError", err)
			}
			if inv.Field != c.Field || !strings.Contains(err.Error(), c.Decode) || inv.Reason != c.Reason {
				t.Errorf("DecodeJob: field %q reason %s error %q; want field %q reason %s containing %q", inv.Field, inv.Reason, err, c.Field, c.Reason, c.Decode)
			}
		})
	}
	if seen != len(cases)-1 {
		t.Errorf("%d corpus files, %d expectations", seen, len(cases)-1)
	}
}

// TestTenThousandRecipients is the generated member of the corpus.
func TestTenThousandRecipients(t *testing.T) {
	_, err := DecodeJob(TenThousandRecipientsJob("noreply@rel.example"))
	var inv *InvalidError
	if !errors.As(err, &inv) || inv.Field != "to" || !strings.Contains(err.Error(), "10000 recipients in to+cc+bcc, over the limit of 1000") {
		t.Fatalf("DecodeJob: %v", err)
	}
}

// TenThousandRecipientsJob is a job body with 10,000 recipients.
func TenThousandRecipientsJob(from string) []byte {
	var b strings.Builder
	fmt.Fprintf(&b, `{"from":%q,"subject":"x","text":"x","to":[`, from)
	for i := range 10000 {
		if i > 0 {
			b.WriteByte(',')
		}
		fmt.Fprintf(&b, `"r%d@example.com"`, i)
	}
	b.WriteString("]}")
	return []byte(b.String())
}
