package main

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/mailworker/mailworker/graphmail/graphtest"
)

// TestCheckCommand runs `mailworker check` (the built binary) before the
// streams exist, after `provision`, and against profiles that cannot work: a
// refused secret and an app with tenant-wide Mail.Send consent.
func TestCheckCommand(t *testing.T) {
	t.Parallel()
	ns := startTestNATS(t, nil)
	cert, certPEM := selfSignedRSA(t, time.Now().Add(10*24*time.Hour))
	const secret, wrongSecret = "CHECK-SECRET-4d1e", "CHECK-WRONG-SECRET-99ab"
	scoped, scopedCA := startFake(t, graphtest.Options{TenantID: "t1", ClientID: "c1", Certificate: cert, ClientSecret: secret})
	consented, consentedCA := startFake(t, graphtest.Options{TenantID: "t2", ClientID: "c2", ClientSecret: secret,
		Roles: []string{"Mail.Send", "User.Read.All"}})
	dir := t.TempDir()
	certFile := filepath.Join(dir, "billing.pem")
	if err := os.WriteFile(certFile, certPEM, 0o600); err != nil {
		t.Fatal(err)
	}
	profile := func(name string, f *graphtest.Server, ca, tenant, client, cred string) string {
		return fmt.Sprintf(`
  %s:
    tenantId: %s
    clientId: %s
    authorityHost: %s
    graphURL: %s
    caFile: %s
    credential: {%s}
    allowedSenders: [%s@contoso.example]`, name, tenant, client, f.URL(), f.GraphURL(), ca, cred, name)
	}
	writeCfg := func(file string, profiles ...string) string {
		path := filepath.Join(dir, file)
		cfg := fmt.Sprintf("nats: {url: %q}\nstreams: {provision: false}\nprofiles:%s\n", ns.ClientURL(), strings.Join(profiles, ""))
		if err := os.WriteFile(path, []byte(cfg), 0o600); err != nil {
			t.Fatal(err)
		}
		return path
	}
	good := writeCfg("good.yaml", profile("billing", scoped, scopedCA, "t1", "c1", "certificateFile: "+certFile))

	out, errOut, code := runCmd(t, "", "check", "--config", good)
	if code != 1 || !strings.Contains(out, "problem: nats:") || !strings.Contains(out, "mailworker provision") {
		t.Fatalf("check before provisioning: exit %d, want 1 naming the missing streams\n%s%s", code, out, errOut)
	}
	for _, line := range strings.Split(out, "\n") {
		if n := strings.Count(line, "mailworker provision"); n > 1 {
			t.Errorf("the provision hint appears %d times in one line: %s", n, line)
		}
	}
	if _, errOut, code := runCmd(t, "", "provision", "--config", good); code != 0 {
		t.Fatalf("provision: exit %d: %s", code, errOut)
	}
	tokensBefore := scoped.TokenRequests()
	out, errOut, code = runCmd(t, "", "check", "--config", good)
	thumb := strings.TrimPrefix(graphtest.CertificateThumbprint(cert), "cert:")
	for _, want := range []string{"nats: ok", "thumbprint " + thumb, "token:       ok", "tenant-wide mail permissions: none",
		"warning: profile billing: certificate " + thumb + " expires in 10 days", "ready:"} {
		if !strings.Contains(out, want) {
			t.Errorf("check output lacks %q:\n%s%s", want, out, errOut)
		}
	}
	if code != 0 {
		t.Fatalf("check on a ready setup: exit %d\n%s%s", code, out, errOut)
	}
	if n := scoped.TokenRequests() - tokensBefore; n != 1 || len(scoped.Messages()) != 0 || scoped.SendRequests() != 0 {
		t.Errorf("check made %d token requests and %d Graph calls, want 1 and 0", n, scoped.SendRequests())
	}

	bad := writeCfg("bad.yaml",
		profile("wrong", scoped, scopedCA, "t1", "c1", "clientSecret: "+wrongSecret),
		profile("consented", consented, consentedCA, "t2", "c2", "clientSecret: "+secret))
	out, errOut, code = runCmd(t, "", "check", "--config", bad, "--json")
	if code != 1 {
		t.Fatalf("check with broken profiles: exit %d, want 1\n%s%s", code, out, errOut)
	}
	var res checkResult
	if err := json.Unmarshal([]byte(out), &res); err != nil {
		t.Fatalf("--json output: %v\n%s", err, out)
	}
	if len(res.Profiles) != 2 || res.Profiles[0].Profile != "consented" || res.Profiles[1].Profile != "wrong" {
		t.Fatalf("profiles %+v", res.Profiles)
	}
	if got := res.Profiles[0].TenantWideRoles; len(got) != 1 || got[0] != "Mail.Send" {
		t.Errorf("consented: tenant-wide roles %v, want [Mail.Send]", got)
	}
	if tok := res.Profiles[1].Token; !strings.Contains(tok, "7000215") || !strings.Contains(tok, "configuration error") ||
		strings.Contains(tok, "retryable") || !strings.Contains(tok, "profiles.wrong.credential") {
		t.Errorf("wrong secret: token %q, want the AADSTS7000215 refusal as a configuration error naming the setting", tok)
	}
	problems := strings.Join(res.Problems, "\n")
	if !strings.Contains(problems, "profile consented: the app holds tenant-wide mail permissions Mail.Send") ||
		!strings.Contains(problems, "profile wrong: Entra issued no token") {
		t.Errorf("problems:\n%s", problems)
	}
	for _, s := range []string{secret, wrongSecret} {
		if strings.Contains(out+errOut, s) {
			t.Errorf("a client secret appears in check's output:\n%s%s", out, errOut)
		}
	}

	// A profile without the sandbox's CA: a TLS failure, named as one.
	noCA := strings.Replace(profile("billing", scoped, scopedCA, "t1", "c1", "clientSecret: "+secret), "caFile: "+scopedCA, "", 1)
	out, errOut, _ = runCmd(t, "", "check", "--config", writeCfg("noca.yaml", noCA))
	if !strings.Contains(out, "token:       TLS failure: the certificate of "+scoped.URL()) || !strings.Contains(out, "profiles.billing.caFile") ||
		strings.Contains(out, "unable to resolve an endpoint") {
		t.Errorf("check without the CA: want a TLS failure naming caFile:\n%s%s", out, errOut)
	}
	// The sandbox's authority with the default Graph URL: refused before any token is fetched.
	tokensBefore = scoped.TokenRequests()
	noGraph := strings.Replace(profile("billing", scoped, scopedCA, "t1", "c1", "clientSecret: "+secret), "graphURL: "+scoped.GraphURL(), "", 1)
	out, errOut, code = runCmd(t, "", "check", "--config", writeCfg("nograph.yaml", noGraph))
	if code == 0 || !strings.Contains(errOut, "mailworker: ") || !strings.Contains(errOut, "are not both Microsoft's") {
		t.Errorf("check with a sandbox authority and Graph's default URL: exit %d, want a refusal\n%s%s", code, out, errOut)
	}
	if n := scoped.TokenRequests() - tokensBefore; n != 0 {
		t.Errorf("check fetched %d tokens for a profile whose token would go to another host", n)
	}
}
