package graphmail

import (
	"bytes"
	"testing"
)

// FuzzScanMIME: any input maps to a layout whose ranges lie inside the
// message and nest (delimiter ≤ body start ≤ body end ≤ end), and a plan
// over it builds a skeleton without a panic, never larger than the input
// plus the stand-in parts.
func FuzzScanMIME(f *testing.F) {
	for _, s := range []string{
		"From: a@b\r\nContent-Type: multipart/mixed; boundary=b\r\n\r\npre\r\n--b\r\nContent-Type: text/plain\r\n\r\nx\r\n--b\r\nContent-Disposition: attachment; filename=a\r\nContent-Transfer-Encoding: base64\r\n\r\nQUFB\r\n--b--\r\nepi\r\n",
		"Content-Type: multipart/mixed; boundary=b\n\n--b\nContent-Type: multipart/related; boundary=c\n\n--c\nContent-ID: <x>\n\nzz\n--b--\n",
		"Content-Type: application/pdf; name=x.pdf\r\nContent-Transfer-Encoding: base64\r\n\r\nQUFBQQ==\r\n",
		"Content-Type: multipart/mixed; boundary=\"\"\r\n\r\n--\r\n\r\n",
		"no header end",
		"\r\n\r\n",
		"Content-Type: multipart/mixed; boundary=b\r\n\r\n--b \t\r\nContent-Type: text/plain; name*0*=iso-8859-1''%E4; name*1=b\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\na=3D=\r\nb\r\n--b--",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, msg []byte) {
		lay, err := scanMIME(bytes.NewReader(msg))
		if err != nil {
			return
		}
		if lay.size != int64(len(msg)) {
			t.Fatalf("size %d of %d bytes", lay.size, len(msg))
		}
		for _, l := range lay.leaves {
			if !(l.delim <= l.bodyStart && l.bodyStart <= l.bodyEnd && l.bodyEnd <= l.end && l.end <= lay.size) || (l.delim >= 0 && l.parent < 0) {
				t.Fatalf("leaf out of order: %+v (size %d)", l, lay.size)
			}
		}
		out, _ := planMIME(lay, int64(len(msg)/2))
		sk, err := skeleton(bytes.NewReader(msg), lay, out, int64(len(msg))+int64(len(lay.multiparts)+1)*512)
		if err != nil {
			t.Fatalf("skeleton: %v", err)
		}
		_ = sk
	})
}

// TestScanMIMEPartWithoutHeaderEnd: a part whose header section never ends
// before the next delimiter is an empty part, not the start of a header
// that swallows the rest of the message.
func TestScanMIMEPartWithoutHeaderEnd(t *testing.T) {
	msg := "Content-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\nContent-Type: text/plain\r\n--b\r\n" +
		"Content-Type: application/pdf; name=a.pdf\r\nContent-Transfer-Encoding: base64\r\n\r\nQUFB\r\n--b--\r\n"
	lay, err := scanMIME(bytes.NewReader([]byte(msg)))
	if err != nil {
		t.Fatal(err)
	}
	if len(lay.leaves) != 2 || lay.leaves[1].name != "a.pdf" || lay.leaves[0].bodyStart != lay.leaves[0].bodyEnd {
		t.Fatalf("leaves %+v", lay.leaves)
	}
	if got := msg[lay.leaves[1].bodyStart:lay.leaves[1].bodyEnd]; got != "QUFB" {
		t.Fatalf("body %q", got)
	}
}
