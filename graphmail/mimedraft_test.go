package graphmail_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"mime/quotedprintable"
	"strings"
	"testing"

	"github.com/mailworker/mailworker/graphmail"
	"github.com/mailworker/mailworker/graphmail/graphtest"
	"github.com/mailworker/mailworker/queue/contract"
)

// mimePart is one attachment part of a test message.
type mimePart struct {
	header  string // Content-Type … Content-Disposition … (without the encoding)
	content []byte
	qp      bool // quoted-printable, else base64
	name    string
	cid     string
	inline  bool
}

// largeMIME builds a multipart/mixed message with threading headers, an
// alternative text/HTML body referencing an inline image, and parts.
func largeMIME(from string, parts []mimePart) []byte {
	var b bytes.Buffer
	b.WriteString("From: =?UTF-8?B?" + base64.StdEncoding.EncodeToString([]byte("Scanner Étage 3")) + "?= <" + from + ">\r\n" +
		"To: a@example.com\r\nCc: c@example.com\r\nSubject: =?UTF-8?Q?Scan_=C3=A9tage?=\r\n" +
		"Message-ID: <scan-42@scanner.example>\r\nIn-Reply-To: <req-1@example.com>\r\n" +
		"References: <req-0@example.com> <req-1@example.com>\r\nX-Scanner: floor-3\r\n" +
		"MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=\"outer\"\r\n\r\n" +
		"This is a multi-part message in MIME format.\r\n" +
		"--outer\r\nContent-Type: multipart/related; boundary=rel\r\n\r\n" +
		"--rel\r\nContent-Type: multipart/alternative; boundary=alt\r\n\r\n" +
		"--alt\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nScan attached.\r\n" +
		"--alt\r\nContent-Type: text/html; charset=utf-8\r\n\r\n<p>Scan <img src=\"cid:logo@x\"></p>\r\n--alt--\r\n")
	related := true
	for _, p := range parts {
		if !p.inline && related {
			b.WriteString("--rel--\r\n")
			related = false
		}
		bnd := "outer"
		if p.inline {
			bnd = "rel"
		}
		b.WriteString("--" + bnd + "\r\n" + p.header)
		if p.qp {
			b.WriteString("Content-Transfer-Encoding: quoted-printable\r\n\r\n")
			w := quotedprintable.NewWriter(&b)
			w.Write(p.content)
			w.Close()
			b.WriteString("\r\n")
		} else {
			b.WriteString("Content-Transfer-Encoding: base64\r\n\r\n")
			enc := base64.StdEncoding.EncodeToString(p.content)
			for len(enc) > 76 {
				b.WriteString(enc[:76] + "\r\n")
				enc = enc[76:]
			}
			b.WriteString(enc + "\r\n")
		}
	}
	if related {
		b.WriteString("--rel--\r\n")
	}
	b.WriteString("--outer--\r\n")
	return b.Bytes()
}

func sum(b []byte) string {
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:])
}

// TestMIMEDraftLargeParts: a MIME job over one sendMail request goes through
// a draft created from its MIME: the large parts arrive as attachments byte
// for byte (base64 and quoted-printable decoded), with their names (RFC
// 2231 in ISO-8859-1, RFC 2047 in UTF-8), content types, isInline and
// contentId; the small ones stay in the MIME; the header section (the job
// id stamp, Message-ID, In-Reply-To, References) is kept; the draft's
// internetMessageId is the MIME's Message-ID.
func TestMIMEDraftLargeParts(t *testing.T) {
	ctx := context.Background()
	logo, pdf, sheet, small, qp := rnd(t, 2<<20), rnd(t, 6<<20), rnd(t, 3<<20+5), []byte("small notes\r\n"), []byte(strings.Repeat("a=b\tc\r\n", 400_000))
	parts := []mimePart{
		{header: "Content-Type: image/png\r\nContent-ID: <logo@x>\r\nContent-Disposition: inline\r\n", content: logo, cid: "logo@x", inline: true},
		{header: "Content-Type: application/pdf\r\nContent-Disposition: attachment; filename*=iso-8859-1''Bericht%20%C4rzte.pdf\r\n", content: pdf, name: "Bericht Ärzte.pdf"},
		{header: "Content-Type: application/vnd.ms-excel; name=\"=?UTF-8?B?" + base64.StdEncoding.EncodeToString([]byte("報告.xls")) + "?=\"\r\n", content: sheet, name: "報告.xls"},
		{header: "Content-Type: text/plain; name=notes.txt\r\nContent-Disposition: attachment; filename=notes.txt\r\n", content: small, name: "notes.txt"},
		{header: "Content-Type: text/csv\r\nContent-Disposition: attachment; filename=\"data.csv\"\r\n", content: qp, qp: true, name: "data.csv"},
	}
	raw := largeMIME(itSender, parts)
	if graphmail.MIMEFitsSendMail(int64(len(raw))) {
		t.Fatalf("test message of %d bytes fits sendMail", len(raw))
	}
	job := &contract.Job{From: itSender, To: []string{"a@example.com"}, Cc: []string{"c@example.com"},
		MIME: &contract.MIME{ObjectRef: "eml"}}
	store := memStore{"eml": raw}

	j, _ := draftJobs(t, graphmail.Mode{}, store)
	if j.UsesDraft(ctx, "p", job) {
		t.Error("sendMail mode: a large MIME job goes through a draft")
	}
	_, err := j.Send(ctx, "p", "j0", job)
	if e := asSendError(t, err); e.Reason != contract.ReasonMessageTooLarge || !strings.Contains(e.Message, "deliveryMode: draft") {
		t.Errorf("sendMail mode: %v", err)
	}

	j, s := draftJobs(t, graphmail.Mode{Via: graphmail.ModeDraft}, store)
	if !j.UsesDraft(ctx, "p", job) {
		t.Fatal("draft mode: a large MIME job does not go through a draft")
	}
	var saved []contract.Draft
	res, err := j.SendResumable(ctx, "p", "job-mime-1", job, nil, func(_ context.Context, d *contract.Draft) error {
		saved = append(saved, *d)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if res.InternetMessageID != "<scan-42@scanner.example>" {
		t.Errorf("internetMessageId %q, want the MIME's Message-ID", res.InternetMessageID)
	}
	if len(saved) == 0 || saved[len(saved)-1].SendAt == nil {
		t.Errorf("draft progress not saved before the send: %+v", saved)
	}
	msgs := s.Messages()
	if len(msgs) != 1 {
		t.Fatalf("%d messages delivered, want 1", len(msgs))
	}
	m := msgs[0]
	if !m.Draft || !m.MIME || m.JobID != "job-mime-1" {
		t.Errorf("delivered: draft %v mime %v job %q", m.Draft, m.MIME, m.JobID)
	}
	hdr := string(contract.HeaderSection(m.Delivered))
	for _, want := range []string{"X-Mailworker-Job-Id: job-mime-1\r\n", "Message-ID: <scan-42@scanner.example>", "In-Reply-To: <req-1@example.com>",
		"References: <req-0@example.com> <req-1@example.com>", "X-Scanner: floor-3"} {
		if !strings.Contains(hdr, want) {
			t.Errorf("delivered header lacks %q:\n%s", want, hdr)
		}
	}
	if !strings.HasPrefix(hdr, "X-Mailworker-Job-Id: job-mime-1\r\n") {
		t.Errorf("the stamp is not the first field")
	}
	if m.Subject != "Scan étage" {
		t.Errorf("subject %q", m.Subject)
	}
	byName := map[string]graphtest.AttachmentInfo{}
	for _, a := range m.Attachments {
		byName[a.Name] = a
	}
	for _, p := range parts {
		a, ok := byName[p.name]
		if p.cid != "" {
			for _, x := range m.Attachments {
				if x.ContentID == p.cid {
					a, ok = x, true
				}
			}
		}
		if !ok {
			t.Errorf("attachment %q (cid %q) missing; got %+v", p.name, p.cid, m.Attachments)
			continue
		}
		if a.SHA256 != sum(p.content) || a.Size != len(p.content) {
			t.Errorf("attachment %q: %d bytes sha %s, want %d bytes sha %s", p.name, a.Size, a.SHA256[:8], len(p.content), sum(p.content)[:8])
		}
		if a.IsInline != p.inline {
			t.Errorf("attachment %q: isInline %v", p.name, a.IsInline)
		}
		ct, _, _ := strings.Cut(strings.TrimPrefix(p.header, "Content-Type: "), ";")
		ct, _, _ = strings.Cut(ct, "\r\n")
		if a.ContentType != ct {
			t.Errorf("attachment %q: content type %q, want %q", p.name, a.ContentType, ct)
		}
	}
	if len(m.Attachments) != len(parts) {
		t.Errorf("%d attachments, want %d", len(m.Attachments), len(parts))
	}
	// The small part stayed in the MIME; the large ones are not in it.
	if !bytes.Contains(m.Delivered, []byte("filename=notes.txt")) || bytes.Contains(m.Delivered, []byte("Bericht")) {
		t.Errorf("the draft's MIME does not hold exactly the small parts")
	}
	if d := s.Drafts(); len(d) != 1 || d[0].Deliveries != 1 || d[0].InternetMessageID != "<scan-42@scanner.example>" {
		t.Errorf("drafts: %+v", d)
	}
}

// TestMIMEDraftOnlyAttachment: a message whose multipart holds only a large
// attachment (as some scanners send) keeps a valid multipart: an empty text
// part stands in, and the attachment arrives.
func TestMIMEDraftOnlyAttachment(t *testing.T) {
	ctx := context.Background()
	pdf := rnd(t, 5<<20)
	enc := base64.StdEncoding.EncodeToString(pdf)
	raw := []byte("From: " + itSender + "\r\nTo: a@example.com\r\nSubject: scan\r\nMIME-Version: 1.0\r\n" +
		"Content-Type: multipart/mixed; boundary=b1\r\n\r\n--b1\r\nContent-Type: application/pdf; name=scan.pdf\r\n" +
		"Content-Transfer-Encoding: base64\r\n\r\n" + enc + "\r\n--b1--\r\n")
	job := &contract.Job{From: itSender, To: []string{"a@example.com"}, MIME: &contract.MIME{ObjectRef: "eml"}}
	j, s := draftJobs(t, graphmail.Mode{Via: graphmail.ModeDraft}, memStore{"eml": raw})
	if _, err := j.SendResumable(ctx, "p", "only", job, nil, nil); err != nil {
		t.Fatal(err)
	}
	m := s.Messages()
	if len(m) != 1 || len(m[0].Attachments) != 1 || m[0].Attachments[0].SHA256 != sum(pdf) || m[0].Attachments[0].Name != "scan.pdf" {
		t.Fatalf("delivered: %+v", m)
	}
	if !bytes.Contains(m[0].Delivered, []byte("--b1\r\nContent-Type: text/plain; charset=us-ascii\r\n\r\n\r\n--b1--")) {
		t.Errorf("no stand-in part:\n%s", m[0].Delivered)
	}
}

// TestMIMEDraftTooMuchText: a message whose text alone is over one request
// is refused message_too_large before any Graph call (text cannot go by
// upload session).
func TestMIMEDraftTooMuchText(t *testing.T) {
	raw := []byte("From: " + itSender + "\r\nTo: a@example.com\r\nSubject: long\r\n\r\n" + strings.Repeat("x", 5<<20) + "\r\n")
	job := &contract.Job{From: itSender, To: []string{"a@example.com"}, MIME: &contract.MIME{ObjectRef: "eml"}}
	j, s := draftJobs(t, graphmail.Mode{Via: graphmail.ModeDraft}, memStore{"eml": raw})
	_, err := j.SendResumable(context.Background(), "p", "long", job, nil, nil)
	if e := asSendError(t, err); e.Reason != contract.ReasonMessageTooLarge || e.Class != contract.ClassPermanent {
		t.Errorf("got %v", err)
	}
	if n := len(s.Drafts()); n != 0 {
		t.Errorf("%d drafts created", n)
	}
}

// TestMIMEDraftCreateOver4MB: the client never sends a MIME create request
// over Graph's 4 MB (refused before any call, message_too_large).
func TestMIMEDraftCreateOver4MB(t *testing.T) {
	s := newGraphtest(t, graphtest.Options{ClientSecret: itSecret})
	c := draftClient(t, s)
	raw := []byte("From: " + itSender + "\r\nTo: a@example.com\r\nSubject: x\r\n\r\n" + strings.Repeat("y", 3<<20+10) + "\r\n")
	_, err := c.CreateDraft(context.Background(), &graphmail.Message{From: itSender, MIME: raw})
	if e := asSendError(t, err); e.Reason != contract.ReasonMessageTooLarge || e.Status != 0 {
		t.Errorf("client: %v", err)
	}
	if n := len(s.Drafts()); n != 0 {
		t.Errorf("%d drafts", n)
	}
}

// TestMIMEDraftExchangeMessageID: when Exchange gives the MIME draft its own
// Message-ID (undocumented either way: graphtest's MIMENewMessageID), the
// send is settled by the id Graph answered, not the MIME's.
func TestMIMEDraftExchangeMessageID(t *testing.T) {
	ctx := context.Background()
	pdf := rnd(t, 5<<20)
	raw := []byte("From: " + itSender + "\r\nTo: a@example.com\r\nSubject: scan\r\nMessage-ID: <own@scanner>\r\nMIME-Version: 1.0\r\n" +
		"Content-Type: multipart/mixed; boundary=b1\r\n\r\n--b1\r\nContent-Type: text/plain\r\n\r\nscan\r\n--b1\r\nContent-Type: application/pdf; name=scan.pdf\r\n" +
		"Content-Transfer-Encoding: base64\r\n\r\n" + base64.StdEncoding.EncodeToString(pdf) + "\r\n--b1--\r\n")
	s := newGraphtest(t, graphtest.Options{ClientSecret: itSecret, Drafts: graphtest.DraftOptions{MIMENewMessageID: true}})
	store := memStore{"eml": raw}
	j := graphmail.NewSender(store)
	j.Add("p", draftClient(t, s), false)
	j.SetMode("p", graphmail.Mode{Via: graphmail.ModeDraft})
	job := &contract.Job{From: itSender, To: []string{"a@example.com"}, MIME: &contract.MIME{ObjectRef: "eml"}}
	var d contract.Draft
	res, err := j.SendResumable(ctx, "p", "newid", job, nil, func(_ context.Context, p *contract.Draft) error { d = *p; return nil })
	if err != nil {
		t.Fatal(err)
	}
	drafts := s.Drafts()
	if len(drafts) != 1 || drafts[0].InternetMessageID == "<own@scanner>" || res.InternetMessageID != drafts[0].InternetMessageID ||
		d.InternetMessageID != drafts[0].InternetMessageID {
		t.Fatalf("drafts %+v, result %q, saved %q: want Exchange's id saved and reported", drafts, res.InternetMessageID, d.InternetMessageID)
	}
	// A resumed attempt (SendAt set) settles by that id in Sent Items,
	// without reading the message (gone from the store here).
	delete(store, "eml")
	res, err = j.SendResumable(ctx, "p", "newid", job, &d, nil)
	if err != nil || res.Lookup != contract.LookupSent {
		t.Fatalf("resume after the send: %+v %v, want found sent", res, err)
	}
	if n := len(s.Messages()); n != 1 {
		t.Errorf("%d messages, want 1", n)
	}
}

// TestMIMEDraftSinglePart: a message that is one large file at the top
// level (Content-Type: application/pdf, no multipart) goes as a draft whose
// MIME keeps every other header field, with an empty text part, and the
// file as its attachment.
func TestMIMEDraftSinglePart(t *testing.T) {
	pdf := rnd(t, 4<<20)
	for _, eol := range []string{"\r\n", "\n"} {
		raw := []byte(strings.ReplaceAll("From: "+itSender+"\r\nTo: a@example.com\r\nSubject: scan\r\nMessage-ID: <one@scanner>\r\nMIME-Version: 1.0\r\n"+
			"Content-Type: application/pdf;\r\n name=\"doc.pdf\"\r\nContent-Transfer-Encoding: base64\r\n\r\n", "\r\n", eol) +
			base64.StdEncoding.EncodeToString(pdf) + eol)
		job := &contract.Job{From: itSender, To: []string{"a@example.com"}, MIME: &contract.MIME{ObjectRef: "eml"}}
		j, s := draftJobs(t, graphmail.Mode{Via: graphmail.ModeDraft}, memStore{"eml": raw})
		if _, err := j.SendResumable(context.Background(), "p", "single", job, nil, nil); err != nil {
			t.Fatalf("%q: %v", eol, err)
		}
		m := s.Messages()
		if len(m) != 1 || len(m[0].Attachments) != 1 || m[0].Attachments[0].SHA256 != sum(pdf) || m[0].Attachments[0].Name != "doc.pdf" ||
			m[0].Attachments[0].ContentType != "application/pdf" {
			t.Fatalf("%q: delivered %+v", eol, m)
		}
		d := string(m[0].Delivered)
		if !strings.Contains(d, "Message-ID: <one@scanner>") || !strings.Contains(d, "multipart/mixed") || strings.Contains(d, "application/pdf") {
			t.Errorf("%q: delivered MIME:\n%s", eol, d)
		}
	}
}
