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
