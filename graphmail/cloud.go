package graphmail

import "fmt"

// Cloud names a Microsoft national cloud. The authority (Entra) host and the
// Graph host always come together: a token from one cloud is useless in another.
type Cloud string

// Supported clouds.
const (
	CloudGlobal   Cloud = "global"   // commercial and GCC (moderate)
	CloudUSGov    Cloud = "usgov"    // GCC High (L4)
	CloudUSGovDoD Cloud = "usgovdod" // DoD (L5)
	CloudChina    Cloud = "china"    // operated by 21Vianet
)

// Endpoints returns the Entra authority host and the Graph base URL of the
// cloud, both without a trailing slash. The empty Cloud means CloudGlobal. It
// returns an error for an unknown cloud.
func (c Cloud) Endpoints() (authorityHost, graphURL string, err error) {
	switch c {
	case "", CloudGlobal:
		return "https://login.microsoftonline.com", "https://graph.microsoft.com", nil
	case CloudUSGov:
		return "https://login.microsoftonline.us", "https://graph.microsoft.us", nil
	case CloudUSGovDoD:
		return "https://login.microsoftonline.us", "https://dod-graph.microsoft.us", nil
	case CloudChina:
		return "https://login.chinacloudapi.cn", "https://microsoftgraph.chinacloudapi.cn", nil
	}
	return "", "", fmt.Errorf("unknown cloud %q (want global, usgov, usgovdod or china)", string(c))
}

// FederatedAudience is the audience of the cloud's federated identity
// credentials, which the presented token's aud must carry: "Public cloud:
// api://AzureADTokenExchange; Fairfax: api://AzureADTokenExchangeUSGov;
// Mooncake: api://AzureADTokenExchangeChina"
// (https://learn.microsoft.com/entra/workload-id/workload-identity-federation-config-app-trust-managed-identity).
// US Gov L4 and DoD L5 are both Fairfax. The empty Cloud means CloudGlobal.
func (c Cloud) FederatedAudience() string {
	switch c {
	case CloudUSGov, CloudUSGovDoD:
		return "api://AzureADTokenExchangeUSGov"
	case CloudChina:
		return "api://AzureADTokenExchangeChina"
	}
	return "api://AzureADTokenExchange"
}

// Feature is a Graph call the worker makes.
type Feature string

// The Graph calls of the worker, by the page that documents each.
const (
	FeatureSendMail      Feature = "sendMail"            // POST /users/{id}/sendMail, JSON (user-sendmail)
	FeatureSendMIME      Feature = "sendMail (MIME)"     // the same, Content-Type text/plain (user-sendmail, outlook-send-mime-message)
	FeatureCreateDraft   Feature = "create message"      // POST /users/{id}/messages (user-post-messages)
	FeatureAddAttachment Feature = "add attachment"      // POST …/messages/{id}/attachments (message-post-attachments)
	FeatureUploadSession Feature = "createUploadSession" // POST …/attachments/createUploadSession (attachment-createuploadsession)
	FeatureSendDraft     Feature = "send"                // POST …/messages/{id}/send (message-send)
	FeatureGetMessage    Feature = "get message"         // GET …/messages/{id} (message-get)
	FeatureListMessages  Feature = "list messages"       // GET …/mailFolders/sentitems/messages?$filter (user-list-messages)
	FeatureDeleteMessage Feature = "delete message"      // DELETE …/messages/{id} (message-delete)
)

// Has reports whether the cloud's Graph v1.0 offers f. Every call is in
// all four clouds but createUploadSession for Outlook attachments, which
// attachment-createuploadsession's "national cloud deployments" table marks
// unavailable in US Government L4 and L5 (DOD) (✅ ❌ ❌ ✅), and which the
// Fairfax v1.0 schema (msgraph-metadata schemas/v1.0-Fairfax.csdl at
// f54f11b: createUploadSession bound to attachmentBase, driveItem and
// printDocument only) does not bind to Collection(graph.attachment), while
// v1.0-Prod and v1.0-Mooncake do. The other calls' actions, navigation
// properties and entity sets are in all three schemas; user-sendmail and
// message-send show ✅ for every cloud.
func (c Cloud) Has(f Feature) bool {
	return !(f == FeatureUploadSession && (c == CloudUSGov || c == CloudUSGovDoD))
}

// Needs lists the Graph calls a delivery mode makes.
func (m SendMode) Needs() []Feature {
	if m == ModeDraft {
		return []Feature{FeatureSendMail, FeatureSendMIME, FeatureCreateDraft, FeatureAddAttachment, FeatureUploadSession,
			FeatureSendDraft, FeatureGetMessage, FeatureListMessages, FeatureDeleteMessage}
	}
	return []Feature{FeatureSendMail, FeatureSendMIME}
}

// Supports returns an error naming the first call mode makes that the cloud
// lacks, or nil.
func (c Cloud) Supports(m SendMode) error {
	for _, f := range m.Needs() {
		if !c.Has(f) {
			name := string(c)
			if name == "" {
				name = string(CloudGlobal)
			}
			return fmt.Errorf("delivery mode %s needs Graph's %s, which the %s cloud does not offer "+
				"(https://learn.microsoft.com/graph/api/attachment-createuploadsession: not available in US Government L4 and L5): "+
				"use deliveryMode sendMail (jobs up to Graph's 4 MB request)", m, f, name)
		}
	}
	return nil
}
