package graphmail_test

import (
	"context"
	"crypto/rand"
	"crypto/rsa"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/mailworker/mailworker/graphmail"
	"github.com/mailworker/mailworker/graphmail/graphtest"
	"github.com/mailworker/mailworker/queue/contract"
)

// TestCloudFeatures: the clouds' Graph calls, as graphmail.Cloud.Has says
// (issue 18, item 2), and what a draft attachment gets in a cloud without
// upload sessions: a clear graph_rejected that names the cloud, not
// mailbox_not_found.
func TestCloudFeatures(t *testing.T) {
	t.Parallel()
	for _, c := range []graphmail.Cloud{graphmail.CloudGlobal, graphmail.CloudChina} {
		if err := c.Supports(graphmail.ModeDraft); err != nil {
			t.Errorf("%s: %v", c, err)
		}
	}
	for _, c := range []graphmail.Cloud{graphmail.CloudUSGov, graphmail.CloudUSGovDoD} {
		err := c.Supports(graphmail.ModeDraft)
		if err == nil || !strings.Contains(err.Error(), "createUploadSession") || !strings.Contains(err.Error(), string(c)) {
			t.Errorf("%s: draft mode: %v; want refused for createUploadSession", c, err)
		}
		if c.Supports(graphmail.ModeSendMail) != nil {
			t.Errorf("%s: sendMail mode refused", c)
		}
	}

	t.Run("an upload session in the US Government fake is graph_rejected, not mailbox_not_found", func(t *testing.T) {
		t.Parallel()
		s := newGraphtest(t, graphtest.Options{ClientSecret: itSecret, Cloud: graphtest.CloudUSGov, GraphAudience: "https://graph.microsoft.com"})
		j := graphmail.NewSender(memStore{"big": rnd(t, 3<<20)})
		j.Add("p", draftClient(t, s), false)
		j.SetMode("p", graphmail.Mode{Via: graphmail.ModeDraft})
		_, err := j.Send(context.Background(), "p", "job-gov", largeJob())
		e := asErr(t, err)
		if e.Reason != contract.ReasonGraphRejected || e.Class != contract.ClassPermanent || e.Op != graphmail.OpCreateSession ||
			!strings.Contains(e.Message, "US Government") {
			t.Errorf("error %v (reason %s, class %v, op %s); want permanent graph_rejected on createUploadSession saying the US Government clouds lack it", e, e.Reason, e.Class, e.Op)
		}
	})
}

// TestFederatedAudiencePerCloud: the federated token's audience is the
// cloud's (issue 18, item 6): Entra's fake in the US Government cloud
// accepts api://AzureADTokenExchangeUSGov by default and refuses the global
// audience (AADSTS70021), and a client told the cloud's audience finds a
// token for another audience itself, before Entra.
func TestFederatedAudiencePerCloud(t *testing.T) {
	t.Parallel()
	if got := graphmail.CloudUSGovDoD.FederatedAudience(); got != "api://AzureADTokenExchangeUSGov" {
		t.Errorf("DoD audience %q", got)
	}
	if got := graphmail.CloudChina.FederatedAudience(); got != "api://AzureADTokenExchangeChina" {
		t.Errorf("China audience %q", got)
	}
	if got := graphmail.Cloud("").FederatedAudience(); got != "api://AzureADTokenExchange" {
		t.Errorf("global audience %q", got)
	}
	key, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	const iss, sub = "https://oidc.example.com/cluster", "system:serviceaccount:mail:mailworker"
	s := newGraphtest(t, graphtest.Options{Cloud: graphtest.CloudUSGov, GraphAudience: "https://graph.microsoft.com",
		Federated: []graphtest.FederatedCredential{{Issuer: iss, Subject: sub, Key: &key.PublicKey}}})
	token := func(aud string) string {
		file := filepath.Join(t.TempDir(), "token")
		if err := os.WriteFile(file, []byte(signJWT(t, key, map[string]any{"iss": iss, "sub": sub,
			"aud": aud, "exp": time.Now().Add(time.Hour).Unix()})), 0o600); err != nil {
			t.Fatal(err)
		}
		return file
	}
	gov := graphmail.CloudUSGov.FederatedAudience()

	c := newIntegrationClient(t, s, graphmail.Credential{FederatedTokenFile: token(gov), FederatedAudience: gov})
	if _, err := c.Send(context.Background(), jobMsg("job-1")); err != nil {
		t.Fatalf("token for %s: %v", gov, err)
	}

	c = newIntegrationClient(t, s, graphmail.Credential{FederatedTokenFile: token(graphtest.DefaultFederatedAudience)})
	_, err = c.Send(context.Background(), jobMsg("job-2"))
	if d := graphmail.EntraDetails(err); d == nil || len(d.Codes) == 0 || d.Codes[0] != 70021 {
		t.Errorf("global audience in the US Government cloud: %v; want AADSTS70021", err)
	}

	failures := s.TokenFailures()
	c = newIntegrationClient(t, s, graphmail.Credential{FederatedTokenFile: token(graphtest.DefaultFederatedAudience), FederatedAudience: gov})
	_, err = c.Send(context.Background(), jobMsg("job-3"))
	if !graphmail.IsCredentialFault(err) || !strings.Contains(err.Error(), gov) {
		t.Errorf("token for the wrong audience: %v; want a local credential fault naming %s", err, gov)
	}
	if s.TokenFailures() != failures {
		t.Errorf("the token for the wrong audience reached Entra")
	}
}
