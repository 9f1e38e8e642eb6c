package main

import (
	"crypto/rand"
	"crypto/rsa"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"net/smtp"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"golang.org/x/crypto/bcrypt"
	"gopkg.in/yaml.v3"
)

// TestShippedComponentsConnect (issue 17 item 9, same class as the cluster
// that never formed): every shipped component's config connects to the
// shipped NATS cluster as its user of accounts.conf, over TLS with the CA its
// manifest mounts. The test changes in each config only what a pod differs in:
// the NATS URL (MAILWORKER_NATS_URL: there is no cluster DNS here), the paths
// of mounted files (CA, certificates, credentials) and listen addresses.
func TestShippedComponentsConnect(t *testing.T) {
	t.Parallel()
	c := startShippedCluster(t)
	streams := c.provisionShipped(t)
	dir := t.TempDir()
	credPEM := writeRSACertPEM(t, dir)
	tokenFile := filepath.Join(dir, "azure-identity-token")
	if err := os.WriteFile(tokenFile, []byte("not-a-real-token"), 0o600); err != nil {
		t.Fatal(err)
	}

	// The worker, with both shipped overlays (deploy/kubernetes/overlays).
	for _, overlay := range []string{"example", "example-workload-identity"} {
		t.Run("worker/"+overlay, func(t *testing.T) {
			cfg := shippedComponentConfig(t, "../../deploy/kubernetes/overlays/"+overlay+"/config.yaml", c.caFile,
				"/var/run/secrets/mailworker/billing.pem", credPEM,
				"/var/run/secrets/azure/tokens/azure-identity-token", tokenFile)
			httpAddr := fmt.Sprintf("127.0.0.1:%d", freePort(t))
			p := startProc(t, []string{"MAILWORKER_CONFIG=" + cfg, "MAILWORKER_NATS_URL=" + c.url(),
				"MAILWORKER_NATS_PASSWORD=" + shippedPassword("worker"), "MAILWORKER_HTTP_LISTEN=" + httpAddr}, "run")
			waitHTTP200(t, p, "http://"+httpAddr+"/readyz")
			if code := p.stop(30 * time.Second); code != 0 {
				t.Errorf("worker exited %d:\n%s", code, tail(p.stderr.String(), 2000))
			}
		})
	}

	// The SMTP ingress (deploy/kubernetes/smtp): ready, and a submission it
	// answers 250 for is a job in the jobs stream.
	t.Run("smtp", func(t *testing.T) {
		smtpCerts := t.TempDir()
		caKey, caCert := loadCA(t, c.certs)
		writeLeaf(t, smtpCerts, "tls", caKey, caCert, "smtp.mail.example.com", []string{"smtp.mail.example.com"}, []net.IP{net.IPv4(127, 0, 0, 1)})
		hash, err := bcrypt.GenerateFromPassword([]byte("scanner-pw"), bcrypt.MinCost)
		if err != nil {
			t.Fatal(err)
		}
		creds := filepath.Join(smtpCerts, "credentials.yaml")
		if err := os.WriteFile(creds, fmt.Appendf(nil, "credentials:\n  - username: scanner\n    passwordHash: %q\n    profile: billing\n", hash), 0o600); err != nil {
			t.Fatal(err)
		}
		cfg := shippedComponentConfig(t, "../../deploy/kubernetes/smtp/config.yaml", c.caFile,
			"/var/run/secrets/mailworker-smtp/tls/", smtpCerts+"/",
			"/var/run/secrets/mailworker-smtp/credentials/credentials.yaml", creds)
		httpAddr := fmt.Sprintf("127.0.0.1:%d", freePort(t))
		smtpAddr := fmt.Sprintf("127.0.0.1:%d", freePort(t))
		p := startProc(t, []string{"MAILWORKER_CONFIG=" + cfg, "MAILWORKER_NATS_URL=" + c.url(),
			"MAILWORKER_NATS_PASSWORD=" + shippedPassword("smtp"), "MAILWORKER_HTTP_LISTEN=" + httpAddr,
			"MAILWORKER_SMTP_LISTEN=" + smtpAddr, fmt.Sprintf("MAILWORKER_SMTP_TLS_LISTEN=127.0.0.1:%d", freePort(t))}, "smtp")
		waitHTTP200(t, p, "http://"+httpAddr+"/readyz")
		before := jobsInStreams(t, c, streams)
		conn, err := net.Dial("tcp", smtpAddr)
		if err != nil {
			t.Fatal(err)
		}
		sc, err := smtp.NewClient(conn, "smtp.mail.example.com") // the name the client verifies and authenticates to
		if err != nil {
			t.Fatal(err)
		}
		defer sc.Close()
		pool := x509.NewCertPool()
		pool.AddCert(caCert)
		if err := sc.StartTLS(&tls.Config{ServerName: "smtp.mail.example.com", RootCAs: pool}); err != nil {
			t.Fatal(err)
		}
		if err := sc.Auth(smtp.PlainAuth("", "scanner", "scanner-pw", "smtp.mail.example.com")); err != nil {
			t.Fatal(err)
		}
		if err := sc.Mail("billing@contoso.com"); err != nil {
			t.Fatal(err)
		}
		if err := sc.Rcpt("someone@example.com"); err != nil {
			t.Fatal(err)
		}
		w, err := sc.Data()
		if err != nil {
			t.Fatal(err)
		}
		fmt.Fprintf(w, "From: billing@contoso.com\r\nTo: someone@example.com\r\nSubject: shipped smtp\r\nDate: %s\r\nMessage-ID: <shipped-%d@contoso.com>\r\n\r\nhello\r\n",
			time.Now().UTC().Format(time.RFC1123Z), time.Now().UnixNano())
		if err := w.Close(); err != nil {
			t.Fatalf("DATA refused: %v\n%s", err, tail(p.stderr.String(), 2000))
		}
		_ = sc.Quit()
		if after := jobsInStreams(t, c, streams); after != before+1 {
			t.Errorf("jobs in the jobs streams: %d before the submission, %d after; want one more", before, after)
		}
		if code := p.stop(30 * time.Second); code != 0 {
			t.Errorf("smtp exited %d:\n%s", code, tail(p.stderr.String(), 2000))
		}
	})

	// The console (docs/console.md): the workers' config plus the document's
	// nats and console sections.
	t.Run("console", func(t *testing.T) {
		cfg := consoleConfigFromDocs(t, c, credPEM)
		listen := fmt.Sprintf("127.0.0.1:%d", freePort(t))
		p := startProc(t, []string{"MAILWORKER_CONFIG=" + cfg, "MAILWORKER_NATS_URL=" + c.url(),
			"MAILWORKER_NATS_PASSWORD=" + shippedPassword("console"), "MAILWORKER_CONSOLE_LISTEN=" + listen,
			"MAILWORKER_CONSOLE_PUBLIC_URL=http://" + listen}, "console")
		// startConsole connects to NATS and opens the queue before it serves.
		waitHTTP200(t, p, "http://"+listen+"/healthz")
		if code := p.stop(30 * time.Second); code != 0 {
			t.Errorf("console exited %d:\n%s", code, tail(p.stderr.String(), 2000))
		}
	})

	// A producer as the runbook's smoke test runs it (docs/runbook.md, "Smoke
	// test"): environment only, no config file; without --wait, as no worker
	// sends here.
	t.Run("producer", func(t *testing.T) {
		before := jobsInStreams(t, c, streams)
		out, errOut, code := runCmdEnv(t, []string{"MAILWORKER_NATS_URL=" + c.url(), "MAILWORKER_NATS_TLS_CA_FILE=" + c.caFile,
			"MAILWORKER_NATS_USER=producer_billing", "MAILWORKER_NATS_INBOX_PREFIX=_INBOX_producer_billing",
			"MAILWORKER_NATS_PASSWORD=" + shippedPassword("producer_billing")}, "",
			"send", "--profile", "billing", "--from", "billing@contoso.com", "--to", "you@contoso.com",
			"--subject", "mailworker smoke test", "--text", "smoke test")
		if code != 0 {
			t.Fatalf("send exit %d:\n%s\n%s", code, out, errOut)
		}
		if after := jobsInStreams(t, c, streams); after != before+1 {
			t.Errorf("jobs: %d before, %d after the send; want one more", before, after)
		}
	})

	// KEDA's nats-jetstream scaler (deploy/kubernetes/base/scaledobject.yaml).
	t.Run("keda", func(t *testing.T) { kedaLag(t, c) })
}

// waitHTTP200 polls url until it answers 200, failing early if p exits.
func waitHTTP200(t *testing.T, p *proc, url string) {
	t.Helper()
	eventually(t, 30*time.Second, url, func() bool {
		select {
		case <-p.done:
			t.Fatalf("process exited before %s answered:\n%s%s", url, tail(p.stdout.String(), 1000), tail(p.stderr.String(), 3000))
		default:
		}
		code, _ := httpGet(url)
		return code == 200
	})
}

// jobsInStreams counts the messages in the provisioned job streams (MAIL_JOBS*).
func jobsInStreams(t *testing.T, c *shippedCluster, streams []string) int {
	t.Helper()
	nc := c.connect(t, "provisioner")
	total := 0
	for _, s := range streams {
		if !strings.HasPrefix(s, "MAIL_JOBS") {
			continue
		}
		msg, err := nc.Request("$JS.API.STREAM.INFO."+s, nil, minWait)
		if err != nil {
			t.Fatal(err)
		}
		var info struct {
			State struct {
				Msgs int `json:"messages"`
			} `json:"state"`
		}
		if err := json.Unmarshal(msg.Data, &info); err != nil {
			t.Fatal(err)
		}
		total += info.State.Msgs
	}
	return total
}

// writeRSACertPEM writes a self-signed certificate and its key as the one PEM
// file a profile's credential.certificateFile names.
func writeRSACertPEM(t *testing.T, dir string) string {
	t.Helper()
	key, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(7), Subject: pkix.Name{CommonName: "mailworker-billing"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(90 * 24 * time.Hour)}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	b := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
	b = append(b, pem.EncodeToMemory(&pem.Block{Type: "RSA PRIVATE KEY", Bytes: x509.MarshalPKCS1PrivateKey(key)})...)
	path := filepath.Join(dir, "billing.pem")
	if err := os.WriteFile(path, b, 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// consoleConfigFromDocs builds the console's config as docs/console.md says:
// the workers' config (overlay example) with the document's nats and console
// sections in place of its own.
func consoleConfigFromDocs(t *testing.T, c *shippedCluster, credPEM string) string {
	t.Helper()
	doc, err := os.ReadFile("../../docs/console.md")
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile("(?s)```yaml\n(nats:.*?console:.*?)```").FindSubmatch(doc)
	if m == nil {
		t.Fatal("docs/console.md: no yaml block with nats and console sections")
	}
	var docCfg map[string]any
	if err := yaml.Unmarshal(m[1], &docCfg); err != nil {
		t.Fatalf("docs/console.md yaml: %v", err)
	}
	base, err := os.ReadFile("../../deploy/kubernetes/overlays/example/config.yaml")
	if err != nil {
		t.Fatal(err)
	}
	var cfg map[string]any
	if err := yaml.Unmarshal(base, &cfg); err != nil {
		t.Fatal(err)
	}
	cfg["nats"], cfg["console"] = docCfg["nats"], docCfg["console"]
	out, err := yaml.Marshal(cfg)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	secret := filepath.Join(dir, "cookie-secret")
	clientSecret := filepath.Join(dir, "client-secret")
	_ = os.WriteFile(secret, []byte(strings.Repeat("s", 48)), 0o600)
	_ = os.WriteFile(clientSecret, []byte("console-client-secret"), 0o600)
	s := string(out)
	for old, new := range map[string]string{
		"/var/run/secrets/nats-ca/ca.crt":         c.caFile,
		"/var/run/secrets/console/cookie-secret":  secret,
		"/var/run/secrets/console/client-secret":  clientSecret,
		"/var/run/secrets/mailworker/billing.pem": credPEM,
	} {
		s = strings.ReplaceAll(s, old, new)
	}
	path := filepath.Join(dir, "console.yaml")
	if err := os.WriteFile(path, []byte(s), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// kedaLag follows KEDA's nats-jetstream scaler against the cluster with the
// shipped ScaledObject's trigger metadata (kedacore/keda
// pkg/scalers/nats_jetstream_scaler.go): GET
// https://<natsServerMonitoringEndpoint>/jsz?acc=<account>&consumers=true&config=true;
// in a cluster, GET /varz there and, for each host of its connect_urls (the
// nodes' client_advertise), GET https://<host>:<endpoint port>/varz for the
// server name and /jsz on it, until the node that leads the consumer answers;
// the lag is that node's num_pending + num_ack_pending. Only the endpoint's
// host differs (127.0.0.1 for nats.nats.svc.cluster.local); its port is the
// one every node's monitoring listens on here, as in the pods.
func kedaLag(t *testing.T, c *shippedCluster) {
	t.Helper()
	// The overlay's ScaledObject: its triggers name the profiles of the
	// overlay's config.yaml, which the cluster was provisioned from.
	b, err := os.ReadFile("../../deploy/kubernetes/overlays/example/scaledobject-patch.yaml")
	if err != nil {
		t.Fatal(err)
	}
	var so struct {
		Spec struct {
			Triggers []struct {
				Type     string            `yaml:"type"`
				Metadata map[string]string `yaml:"metadata"`
			} `yaml:"triggers"`
		} `yaml:"spec"`
	}
	if err := yaml.Unmarshal(b, &so); err != nil {
		t.Fatal(err)
	}
	var triggers []map[string]string
	for _, tr := range so.Spec.Triggers {
		if tr.Type == "nats-jetstream" {
			triggers = append(triggers, tr.Metadata)
		}
	}
	if len(triggers) == 0 {
		t.Fatal("scaledobject-patch.yaml: no nats-jetstream trigger")
	}
	for _, md := range triggers {
		kedaTrigger(t, c, md)
	}
}

// kedaTrigger makes one trigger's requests as KEDA's scaler does.
func kedaTrigger(t *testing.T, c *shippedCluster, md map[string]string) {
	t.Helper()
	if md["useHttps"] != "true" {
		t.Errorf("useHttps %q: the shipped monitoring port serves HTTPS only", md["useHttps"])
	}
	_, port, err := net.SplitHostPort(md["natsServerMonitoringEndpoint"])
	if err != nil {
		t.Fatal(err)
	}
	if port != "8222" {
		t.Fatalf("natsServerMonitoringEndpoint port %s, the shipped config's https port is 8222", port)
	}
	testPort := fmt.Sprint(c.nodes[0].httpsPort)
	get := func(host, path string, v any) error {
		resp, err := c.https.Get("https://" + net.JoinHostPort(host, testPort) + path)
		if err != nil {
			return err
		}
		defer resp.Body.Close()
		if resp.StatusCode != 200 {
			return fmt.Errorf("%s: %s", path, resp.Status)
		}
		return json.NewDecoder(resp.Body).Decode(v)
	}
	type jszResp struct {
		Accounts []struct {
			Name    string `json:"name"`
			Streams []struct {
				Name      string `json:"name"`
				Consumers []struct {
					Name          string `json:"name"`
					NumPending    int    `json:"num_pending"`
					NumAckPending int    `json:"num_ack_pending"`
					Cluster       struct {
						Leader string `json:"leader"`
					} `json:"cluster"`
				} `json:"consumer_detail"`
			} `json:"stream_detail"`
		} `json:"account_details"`
		MetaCluster struct {
			ClusterSize int `json:"cluster_size"`
		} `json:"meta_cluster"`
	}
	jszPath := "/jsz?acc=" + md["account"] + "&consumers=true&config=true"
	var first jszResp
	if err := get("127.0.0.1", jszPath, &first); err != nil {
		t.Fatal(err)
	}
	if first.MetaCluster.ClusterSize != 3 {
		t.Fatalf("/jsz meta cluster size %d, want 3", first.MetaCluster.ClusterSize)
	}
	var varz struct {
		ConnectURLs []string `json:"connect_urls"`
	}
	if err := get("127.0.0.1", "/varz", &varz); err != nil {
		t.Fatal(err)
	}
	if len(varz.ConnectURLs) == 0 {
		t.Fatal("/varz has no connect_urls: KEDA would build node URLs from server names")
	}
	found := false
	eventually(t, 20*time.Second, "KEDA finds the leader of consumer "+md["consumer"]+" of "+md["stream"], func() bool {
		for _, u := range varz.ConnectURLs {
			host := strings.Split(u, ":")[0]
			var sv struct {
				ServerName string `json:"server_name"`
			}
			if err := get(host, "/varz", &sv); err != nil {
				t.Fatalf("KEDA's request to %s: %v", host, err)
			}
			var j jszResp
			if err := get(host, jszPath, &j); err != nil {
				t.Fatalf("KEDA's request to %s: %v", host, err)
			}
			for _, a := range j.Accounts {
				for _, s := range a.Streams {
					for _, cons := range s.Consumers {
						if a.Name == md["account"] && s.Name == md["stream"] && cons.Name == md["consumer"] && cons.Cluster.Leader == sv.ServerName {
							found = true
							t.Logf("KEDA: consumer leader %s at %s, lag %d", sv.ServerName, host, cons.NumPending+cons.NumAckPending)
						}
					}
				}
			}
		}
		return found
	})
}

// TestShippedWorkerWaitsForJetStream: a worker (shipped overlay config,
// streams.provision false) that starts while its NATS node has no JetStream
// quorum — the other two nodes down, as while pods restart — waits for
// JetStream instead of exiting with "run `mailworker provision`", and is ready
// once the nodes are back. Found by the cluster fault suite: a replica started
// on a node that had just restarted exited 1.
func TestShippedWorkerWaitsForJetStream(t *testing.T) {
	t.Parallel()
	c := startShippedCluster(t)
	c.provisionShipped(t)
	dir := t.TempDir()
	cfg := shippedComponentConfig(t, "../../deploy/kubernetes/overlays/example/config.yaml", c.caFile,
		"/var/run/secrets/mailworker/billing.pem", writeRSACertPEM(t, dir))
	c.nodes[1].kill()
	c.nodes[2].kill()
	httpAddr := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	p := startProc(t, []string{"MAILWORKER_CONFIG=" + cfg, "MAILWORKER_NATS_URL=" + c.nodes[0].clientURL(),
		"MAILWORKER_NATS_PASSWORD=" + shippedPassword("worker"), "MAILWORKER_HTTP_LISTEN=" + httpAddr}, "run")
	eventually(t, 60*time.Second, "the worker to report that JetStream does not answer yet", func() bool {
		select {
		case <-p.done:
			t.Fatalf("worker exited while JetStream had no quorum:\n%s", tail(p.stderr.String()+p.stdout.String(), 2000))
		default:
		}
		return strings.Contains(p.stderr.String()+p.stdout.String(), "JetStream not answering yet")
	})
	bin := natsServerBinary(t)
	c.nodes[1].start(bin)
	c.nodes[2].start(bin)
	waitHTTP200(t, p, "http://"+httpAddr+"/readyz")
	if code := p.stop(30 * time.Second); code != 0 {
		t.Errorf("worker exited %d:\n%s", code, tail(p.stderr.String(), 2000))
	}
}
