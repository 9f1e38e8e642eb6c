package graphtest

import (
	"net/http"
	"strings"
)

// DefaultMaxMessageSize is a mailbox's maximum message size unless
// Options.MaxMessageSize says otherwise: Exchange Online's default
// MaxSendSize, 35 MB, in Exchange's binary units (36,700,160 bytes)
// ([session] Tip: "By default, this message size limit is 35 MB";
// [mailboxplan]: "The default value is 35 MB").
const DefaultMaxMessageSize int64 = 35 << 20

// MaxMessageSizeLimit is the largest maximum message size an Exchange admin
// can set, 150 MB ([mailboxplan]: "A valid value is a number up to 150 MB").
const MaxMessageSizeLimit int64 = 150 << 20

// Clouds, as Options.Cloud names them.
const (
	CloudGlobal   = "global"
	CloudUSGov    = "usgov"    // GCC High (L4)
	CloudUSGovDoD = "usgovdod" // DoD (L5)
	CloudChina    = "china"
)

// cloudGraph is each cloud's Graph resource, the aud of its tokens
// ([national-clouds]).
var cloudGraph = map[string]string{
	CloudGlobal:   "https://graph.microsoft.com",
	CloudUSGov:    "https://graph.microsoft.us",
	CloudUSGovDoD: "https://dod-graph.microsoft.us",
	CloudChina:    "https://microsoftgraph.chinacloudapi.cn",
}

// FederatedAudience is the audience a federated identity credential of cloud
// carries ([fic-audience]: "Public cloud: api://AzureADTokenExchange;
// Fairfax: api://AzureADTokenExchangeUSGov; Mooncake:
// api://AzureADTokenExchangeChina"). "" is the global cloud.
func FederatedAudience(cloud string) string {
	switch cloud {
	case CloudUSGov, CloudUSGovDoD:
		return "api://AzureADTokenExchangeUSGov"
	case CloudChina:
		return "api://AzureADTokenExchangeChina"
	}
	return DefaultFederatedAudience
}

// hasUploadSessions reports whether Graph in the fake's cloud has
// createUploadSession for Outlook attachments: [session] lists "Global
// service ✅, US Government L4 ❌, US Government L5 (DOD) ❌, China operated
// by 21Vianet ✅", and msgraph-metadata's v1.0-Fairfax.csdl binds no
// createUploadSession to Collection(graph.attachment) ([csdl-clouds]).
func (s *Server) hasUploadSessions() bool {
	return s.opts.Cloud != CloudUSGov && s.opts.Cloud != CloudUSGovDoD
}

// maxMessageSize is mailbox's maximum message size (Options.MailboxMaxMessageSize,
// then Options.MaxMessageSize).
func (s *Server) maxMessageSize(mailbox string) int64 {
	if n, ok := s.mailboxMaxSize[strings.ToLower(mailbox)]; ok && n > 0 {
		return n
	}
	return s.opts.MaxMessageSize
}

// countedSize is what n bytes of attachment count for in the message size:
// base64, "Base64 encoding increases the size of messages by approximately
// 33%" ([mailboxplan]).
func countedSize(n int64) int64 {
	if n <= 0 {
		return 0
	}
	return (n + 2) / 3 * 4
}

// messageSizeOf counts a message as Exchange does: its text fields and its
// attachments base64-encoded.
func messageSizeOf(m *graphMessage, contents [][]byte) int64 {
	var text int64
	if m != nil {
		text = int64(len(m.Subject))
		if m.Body != nil {
			text += int64(len(m.Body.Content))
		}
	}
	n := countedSize(text)
	for _, c := range contents {
		n += countedSize(int64(len(c)))
	}
	return n
}

// draftSizeLocked is the size of draft m with its attachments so far.
func draftSizeLocked(m *draftMsg) int64 {
	if m.mime != nil {
		// A MIME draft: its MIME as written, and the attachments added since.
		n := int64(len(m.mime))
		for _, a := range m.atts[m.mimeAtts:] {
			n += countedSize(int64(len(a.content)))
		}
		return n
	}
	contents := make([][]byte, len(m.atts))
	for i, a := range m.atts {
		contents[i] = a.content
	}
	return messageSizeOf(&m.msg, contents)
}

// tooLargeForMailbox answers a message over the mailbox's maximum message
// size as Exchange did mid-upload in [docs-2561]: {"error": {"code":
// "ErrorMessageSizeExceeded", "message": "The message exceeds the maximum
// supported size."}}. The source shows no status: 400 is the fake's choice.
func (s *Server) tooLargeForMailbox(w http.ResponseWriter, r *http.Request, key string) {
	s.graphError(w, r, key, http.StatusBadRequest, "ErrorMessageSizeExceeded", "The message exceeds the maximum supported size.", "")
}
