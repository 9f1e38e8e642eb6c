package main

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/mailworker/mailworker/graphmail/graphtest"
)

// TestCheckTracking: with tracking on, `check` fetches a token for the
// tracker's app registration and says when it lacks
// ExchangeMessageTrace.Read.All; with it, check probes the API once and
// passes, and says so when the tenant lacks Microsoft's message trace
// service principal (a 401 to a valid token).
func TestCheckTracking(t *testing.T) {
	t.Parallel()
	ns := startTestNATS(t, nil)
	const secret = "TRACK-CHECK-SECRET"
	without, withoutCA := startFake(t, graphtest.Options{TenantID: "t1", ClientID: "c1", ClientSecret: secret})
	with, withCA := startFake(t, graphtest.Options{TenantID: "t2", ClientID: "c2", ClientSecret: secret, Roles: []string{graphtest.TraceRole}})
	dir := t.TempDir()
	cfgFor := func(file string, f *graphtest.Server, ca, tenant, client string) string {
		path := filepath.Join(dir, file)
		cfg := fmt.Sprintf(`nats: {url: %q}
profiles:
  billing:
    tenantId: t1
    clientId: c1
    authorityHost: %s
    graphURL: %s
    caFile: %s
    credential: {clientSecret: %s}
    allowedSenders: [billing@contoso.example]
tracking:
  enabled: true
  app:
    tenantId: %s
    clientId: %s
    authorityHost: %s
    graphURL: %s
    caFile: %s
    credential: {clientSecret: %s}
`, ns.ClientURL(), without.URL(), without.GraphURL(), withoutCA, secret, tenant, client, f.URL(), f.GraphURL(), ca, secret)
		if err := os.WriteFile(path, []byte(cfg), 0o600); err != nil {
			t.Fatal(err)
		}
		return path
	}
	bad := cfgFor("bad.yaml", without, withoutCA, "t1", "c1")
	if _, errOut, code := runCmd(t, "", "provision", "--config", bad); code != 0 {
		t.Fatalf("provision: exit %d: %s", code, errOut)
	}
	out, errOut, code := runCmd(t, "", "check", "--config", bad)
	if code != 1 || !strings.Contains(out, "tracking: the tracker's token lacks the application permission ExchangeMessageTrace.Read.All") {
		t.Errorf("check without the permission: exit %d\n%s%s", code, out, errOut)
	}
	good := cfgFor("good.yaml", with, withCA, "t2", "c2")
	out, errOut, code = runCmd(t, "", "check", "--config", good)
	if code != 0 || strings.Contains(out, "tracking:") {
		t.Errorf("check with the permission: exit %d\n%s%s", code, out, errOut)
	}
	if n := len(with.TraceRequests()); n != 1 {
		t.Errorf("check made %d message trace requests, want its one probe", n)
	}
	// The role granted, but the tenant lacks Microsoft's message trace
	// service principal (the resource page's prerequisite): the probe says so.
	noSP, noSPCA := startFake(t, graphtest.Options{TenantID: "t3", ClientID: "c3", ClientSecret: secret, Roles: []string{graphtest.TraceRole},
		Trace: graphtest.TraceOptions{NoServicePrincipal: true}})
	out, errOut, code = runCmd(t, "", "check", "--config", cfgFor("nosp.yaml", noSP, noSPCA, "t3", "c3"))
	if code != 1 || !strings.Contains(out, "message trace refused check's probe") || !strings.Contains(out, graphtest.TraceAppID) ||
		!strings.Contains(out, "Grant-MailworkerMessageTrace.ps1") {
		t.Errorf("check without the message trace service principal: exit %d\n%s%s", code, out, errOut)
	}
}
