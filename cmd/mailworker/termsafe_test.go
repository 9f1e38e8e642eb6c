package main

import "testing"

func TestTermSafe(t *testing.T) {
	for _, tt := range []struct{ in, cell, term string }{
		{"plain ✓", "plain ✓", "plain ✓"},
		{"a\r\nb", `a\r\nb`, "a\\r\nb"},
		{"\x1b[31mred\x1b[0m", `\x1b[31mred\x1b[0m`, `\x1b[31mred\x1b[0m`},
		{"\x1b]52;c;cHduZWQ=\x07", `\x1b]52;c;cHduZWQ=\x07`, `\x1b]52;c;cHduZWQ=\x07`},
		{"\u009b2J", `\x9b2J`, `\x9b2J`},
		{"a\tb", `a\tb`, "a\tb"},
		{"evil\u202etxt.exe", `evil\u202etxt.exe`, `evil\u202etxt.exe`},
		{"bad \xff utf8", `bad \xff utf8`, `bad \xff utf8`},
	} {
		if got := cell(tt.in); got != tt.cell {
			t.Errorf("cell(%q) = %q, want %q", tt.in, got, tt.cell)
		}
		if got := termSafe(tt.in); got != tt.term {
			t.Errorf("termSafe(%q) = %q, want %q", tt.in, got, tt.term)
		}
	}
}
