package graphmail

import (
	"bytes"
	"strings"
)

// StampMIME returns a copy of a MIME message with every header field named
// name (case-insensitive) removed from its header section and "name: value"
// prepended as the first field; the rest of the message is unchanged byte
// for byte. name and value must be a valid field name and a value without
// CR or LF (the caller's own stamp, such as X-Mailworker-Job-Id).
func StampMIME(msg []byte, name, value string) []byte {
	out := make([]byte, 0, len(msg)+len(name)+len(value)+4)
	out = append(out, name...)
	out = append(out, ": "...)
	out = append(out, value...)
	out = append(out, "\r\n"...)
	hdrEnd := HeaderEnd(msg)
	skipping := false
	for off := 0; off < hdrEnd; {
		end := bytes.IndexByte(msg[off:hdrEnd], '\n')
		next := hdrEnd
		if end >= 0 {
			next = off + end + 1
		}
		line := msg[off:next]
		if len(line) > 0 && (line[0] == ' ' || line[0] == '\t') {
			// A continuation line belongs to the field before it.
		} else {
			k, _, ok := bytes.Cut(line, []byte(":"))
			skipping = ok && strings.EqualFold(strings.TrimSpace(string(k)), name)
		}
		if !skipping {
			out = append(out, line...)
		}
		off = next
	}
	return append(out, msg[hdrEnd:]...)
}

// HeaderEnd returns the offset of the empty line that ends the header
// section of a MIME message (CRLF or bare LF line ends), or len(msg) when
// there is none (a message with headers only).
func HeaderEnd(msg []byte) int {
	for off := 0; off < len(msg); {
		if msg[off] == '\n' || (msg[off] == '\r' && off+1 < len(msg) && msg[off+1] == '\n') {
			return off
		}
		end := bytes.IndexByte(msg[off:], '\n')
		if end < 0 {
			return len(msg)
		}
		off += end + 1
	}
	return len(msg)
}
