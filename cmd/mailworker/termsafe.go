package main

import (
	"fmt"
	"strings"
	"unicode"
	"unicode/utf8"
)

// termSafe renders a job field (or any text that came from outside) for a
// terminal: control characters (C0 but newline and tab, DEL, C1: ESC, CSI,
// OSC … that move the cursor, recolour, retitle or write to the clipboard),
// Unicode bidirectional and other invisible format characters, and invalid
// UTF-8 become visible escapes (\x1b, \u202e). Newline and tab survive; a
// table cell needs cell() instead.
func termSafe(s string) string {
	return escapeTerm(s, false)
}

// cell is termSafe for one cell of a table: newlines and tabs are escaped
// too, so a field cannot break a row or shift a column.
func cell(s string) string {
	return escapeTerm(s, true)
}

func escapeTerm(s string, oneLine bool) string {
	clean := true
	for _, r := range s {
		if needsEscape(r, oneLine) {
			clean = false
			break
		}
	}
	if clean && utf8.ValidString(s) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); {
		r, size := utf8.DecodeRuneInString(s[i:])
		switch {
		case r == utf8.RuneError && size == 1:
			fmt.Fprintf(&b, `\x%02x`, s[i])
		case r == '\n' && oneLine:
			b.WriteString(`\n`)
		case r == '\r':
			b.WriteString(`\r`)
		case r == '\t' && oneLine:
			b.WriteString(`\t`)
		case needsEscape(r, oneLine) && r < 0x100:
			fmt.Fprintf(&b, `\x%02x`, r)
		case needsEscape(r, oneLine):
			fmt.Fprintf(&b, `\u%04x`, r)
		default:
			b.WriteRune(r)
		}
		i += size
	}
	return b.String()
}

func needsEscape(r rune, oneLine bool) bool {
	switch {
	case r == '\n' || r == '\t':
		return oneLine
	case r == utf8.RuneError:
		return true
	case unicode.IsControl(r): // C0, DEL, C1
		return true
	case unicode.Is(unicode.Cf, r): // bidi overrides, zero-width characters
		return true
	case r == '\u2028' || r == '\u2029':
		return true
	}
	return false
}
