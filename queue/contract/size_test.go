package contract

import "testing"

// TestMessageSize counts a job as Exchange does: attachments base64-encoded
// (4 bytes per 3), objectRef sizes from the given lookup, a MIME message as
// written; and reads sizes in Exchange's binary units.
func TestMessageSize(t *testing.T) {
	sizes := map[string]int64{"ref": 3_000_000, "mime": 5_000_000}
	lookup := func(ref string) (int64, error) { return sizes[ref], nil }
	json := &Job{Subject: "s", Text: "t", To: []string{"a@example.com"},
		Attachments: []Attachment{{Name: "a.pdf", ObjectRef: "ref"}, {Name: "b.txt", ContentBase64: "aGVsbG8="}}}
	n, err := MessageSize(json, lookup)
	if err != nil {
		t.Fatal(err)
	}
	if min := EncodedSize(3_000_000) + EncodedSize(5); n < min || n > min+messageOverhead+4*partOverhead {
		t.Errorf("JSON job counted %d bytes, want the attachments' base64 (%d) plus a few KB", n, min)
	}
	if n, _ := MessageSize(&Job{MIME: &MIME{ObjectRef: "mime"}}, lookup); n != 5_000_000 {
		t.Errorf("MIME job counted %d, want its 5,000,000 bytes as written", n)
	}
	for in, want := range map[string]int64{"": 36_700_160, "35MB": 36_700_160, "150 MB": 157_286_400, "2048KB": 2 << 20,
		"35 MB (36,700,160 bytes)": 36_700_160, "1048576": 1 << 20, "1.5MB": 1_572_864} {
		if got, err := ParseMessageSize(in); err != nil || got != want {
			t.Errorf("ParseMessageSize(%q) = %d, %v; want %d", in, got, err, want)
		}
	}
	for _, in := range []string{"151MB", "35", "big", "-1MB", "35GB"} {
		if _, err := ParseMessageSize(in); err == nil {
			t.Errorf("ParseMessageSize(%q) accepted", in)
		}
	}
	if s := FormatMessageSize(157_286_400); s != "150 MB (157,286,400 bytes)" {
		t.Errorf("FormatMessageSize = %q", s)
	}
}
