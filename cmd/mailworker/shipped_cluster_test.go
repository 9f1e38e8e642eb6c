package main

// A 3-node JetStream cluster of real nats-server processes run from the SHIPPED
// files, deploy/nats/nats-cluster.conf and deploy/nats/accounts.conf, with the
// environment the files document (SERVER_NAME, CLIENT_ADVERTISE,
// MAIL_*_PASSWORD). The server binary is built from the module
// (`go build github.com/nats-io/nats-server/v2`), so it is the same v2.15.2
// the rest of the suite embeds.
//
// What the test changes, and only that, is what differs between a pod and a
// process on this machine (shippedCluster.render):
//   - node i (nats-0..nats-2) listens on its own loopback address 127.0.0.(i+1)
//     instead of 0.0.0.0, with free ports in place of 4222 (clients), 6222
//     (routes) and 8222 (monitoring), because three processes share a host;
//   - the route URLs name 127.0.0.(i+1):<route port> instead of
//     nats-i.nats.nats.svc.cluster.local:6222 (there is no cluster DNS here);
//   - /etc/nats/tls is a temp dir with a test CA and a node certificate
//     (shippedCerts), /data/jetstream a temp store dir per node.
// The test certificate names what cert-manager's does (*.nats.nats.svc.cluster.local,
// nats.nats.svc.cluster.local, server and client auth) plus the loopback
// addresses, as IP SANs for hostname verification and as DNS SANs because
// verify_cert_and_check_known_urls matches a route's DNS SANs against the route
// hosts (nats-server server/auth.go dnsAltNameMatches), which here are the
// loopback addresses. Everything else — TLS everywhere, mutual TLS routes with
// the known-URL check, accounts, limits — runs as shipped.

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
)

const (
	shippedClusterConf  = "../../deploy/nats/nats-cluster.conf"
	shippedAccountsConf = "../../deploy/nats/accounts.conf"
)

// shippedUsers maps each user of accounts.conf to its password variable and the
// password the tests give it.
var shippedUsers = map[string]string{
	"producer_billing": "MAIL_PRODUCER_BILLING_PASSWORD",
	"producer_ops":     "MAIL_PRODUCER_OPS_PASSWORD",
	"provisioner":      "MAIL_PROVISIONER_PASSWORD",
	"worker":           "MAIL_WORKER_PASSWORD",
	"support":          "MAIL_SUPPORT_PASSWORD",
	"console":          "MAIL_CONSOLE_PASSWORD",
	"smtp":             "MAIL_SMTP_PASSWORD",
}

// shippedPassword is the test password of a user of accounts.conf.
func shippedPassword(user string) string { return "pw-" + user + "-SENTINEL" }

var (
	natsServerOnce sync.Once
	natsServerBin  string
	natsServerErr  error
)

// natsServerBinary builds nats-server from the module once per test run.
func natsServerBinary(t *testing.T) string {
	t.Helper()
	natsServerOnce.Do(func() {
		natsServerBin = filepath.Join(binDir, "nats-server")
		out, err := exec.Command("go", "build", "-o", natsServerBin, "github.com/nats-io/nats-server/v2").CombinedOutput()
		if err != nil {
			natsServerErr = fmt.Errorf("go build nats-server: %v\n%s", err, out)
		}
	})
	if natsServerErr != nil {
		t.Fatal(natsServerErr)
	}
	return natsServerBin
}

// shippedNode is one nats-server process of the shipped cluster.
type shippedNode struct {
	t                                *testing.T
	name, ip                         string
	clientPort, routePort, httpsPort int
	dir                              string // config, accounts.conf, store
	mu                               sync.Mutex
	cmd                              *exec.Cmd
	done                             chan struct{}
	log                              *syncBuffer
	stopped                          bool // SIGSTOPped
}

// shippedCluster is three nodes run from the shipped files.
type shippedCluster struct {
	t      *testing.T
	certs  string // dir with ca.crt, tls.crt, tls.key
	caFile string
	nodes  []*shippedNode
	https  *http.Client
}

// freePortOn returns a TCP port that was free on ip a moment ago (Linux
// routes all of 127/8 to lo).
func freePortOn(t *testing.T, ip string) int {
	t.Helper()
	return pickPort(t, ip)
}

// freePortOnAll returns a port that was free on every ip a moment ago.
func freePortOnAll(t *testing.T, ips ...string) int {
	t.Helper()
	return pickPort(t, ips...)
}

// startShippedCluster renders the shipped config for three nodes, starts them
// and waits until they agree on a JetStream meta leader.
func startShippedCluster(t *testing.T) *shippedCluster {
	t.Helper()
	bin := natsServerBinary(t)
	c := &shippedCluster{t: t, certs: t.TempDir()}
	c.caFile = shippedCerts(t, c.certs)
	pool := x509.NewCertPool()
	ca, _ := os.ReadFile(c.caFile)
	pool.AppendCertsFromPEM(ca)
	c.https = &http.Client{Timeout: 3 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}}
	// The monitoring port is the same on every node, as in the pods: KEDA
	// derives a node's monitoring URL from its advertised host and the
	// endpoint's port.
	httpsPort := freePortOnAll(t, "127.0.0.1", "127.0.0.2", "127.0.0.3")
	for i := range 3 {
		ip := fmt.Sprintf("127.0.0.%d", i+1)
		n := &shippedNode{t: t, name: fmt.Sprintf("nats-%d", i), ip: ip, dir: t.TempDir(),
			clientPort: freePortOn(t, ip), routePort: freePortOn(t, ip), httpsPort: httpsPort}
		c.nodes = append(c.nodes, n)
	}
	for _, n := range c.nodes {
		c.render(n)
	}
	for _, n := range c.nodes {
		n.start(bin)
		t.Cleanup(n.kill)
	}
	c.waitMetaLeader(60 * time.Second)
	return c
}

// render writes node n's nats-cluster.conf and accounts.conf, changing only
// addresses, ports and paths (see the file comment). A replacement that finds
// nothing fails the test: the shipped file changed and the test must follow.
func (c *shippedCluster) render(n *shippedNode) {
	t := c.t
	conf, err := os.ReadFile(shippedClusterConf)
	if err != nil {
		t.Fatal(err)
	}
	accounts, err := os.ReadFile(shippedAccountsConf)
	if err != nil {
		t.Fatal(err)
	}
	s := string(conf)
	replace := func(old, new string) {
		t.Helper()
		if !strings.Contains(s, old) {
			t.Fatalf("%s no longer contains %q: update the test's substitutions", shippedClusterConf, old)
		}
		s = strings.ReplaceAll(s, old, new)
	}
	replace("listen: 0.0.0.0:4222", fmt.Sprintf("listen: %s:%d", n.ip, n.clientPort))
	replace("listen: 0.0.0.0:6222", fmt.Sprintf("listen: %s:%d", n.ip, n.routePort))
	replace("https: 0.0.0.0:8222", fmt.Sprintf("https: %s:%d", n.ip, n.httpsPort))
	for i, o := range c.nodes {
		replace(fmt.Sprintf("nats-%d.nats.nats.svc.cluster.local:6222", i), fmt.Sprintf("%s:%d", o.ip, o.routePort))
	}
	replace("/etc/nats/tls", c.certs)
	replace("/data/jetstream", filepath.Join(n.dir, "jetstream"))
	for name, b := range map[string][]byte{"nats-cluster.conf": []byte(s), "accounts.conf": accounts} {
		if err := os.WriteFile(filepath.Join(n.dir, name), b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
}

// env is the environment a pod of the StatefulSet has (nats-cluster.conf header).
func (n *shippedNode) env() []string {
	env := []string{"PATH=" + os.Getenv("PATH"), "SERVER_NAME=" + n.name,
		fmt.Sprintf("CLIENT_ADVERTISE=%s:%d", n.ip, n.clientPort)}
	for user, v := range shippedUsers {
		env = append(env, v+"="+shippedPassword(user))
	}
	return env
}

func (n *shippedNode) start(bin string) {
	n.t.Helper()
	cmd := exec.Command(bin, "-c", filepath.Join(n.dir, "nats-cluster.conf"))
	cmd.Env = n.env()
	cmd.Dir = n.dir
	log := &syncBuffer{}
	cmd.Stdout, cmd.Stderr = log, log
	if err := cmd.Start(); err != nil {
		n.t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { _ = cmd.Wait(); close(done) }()
	n.mu.Lock()
	n.cmd, n.done, n.log, n.stopped = cmd, done, log, false
	n.mu.Unlock()
}

// kill SIGKILLs the node (a no-op when it is not running) and waits for it.
func (n *shippedNode) kill() {
	n.mu.Lock()
	cmd, done, stopped := n.cmd, n.done, n.stopped
	n.mu.Unlock()
	if cmd == nil {
		return
	}
	select {
	case <-done:
		return
	default:
	}
	if stopped {
		_ = cmd.Process.Signal(syscall.SIGCONT)
	}
	_ = cmd.Process.Kill()
	<-done
}

// pause freezes the node (SIGSTOP): its sockets stay open, nothing answers.
func (n *shippedNode) pause() {
	n.mu.Lock()
	defer n.mu.Unlock()
	_ = n.cmd.Process.Signal(syscall.SIGSTOP)
	n.stopped = true
}

// resume undoes pause.
func (n *shippedNode) resume() {
	n.mu.Lock()
	defer n.mu.Unlock()
	_ = n.cmd.Process.Signal(syscall.SIGCONT)
	n.stopped = false
}

// logs returns what the node wrote so far.
func (n *shippedNode) logs() string {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.log.String()
}

func (n *shippedNode) clientURL() string { return fmt.Sprintf("tls://%s:%d", n.ip, n.clientPort) }

// url is every node's client URL, for a client that may use any.
func (c *shippedCluster) url() string {
	var urls []string
	for _, n := range c.nodes {
		urls = append(urls, n.clientURL())
	}
	return strings.Join(urls, ",")
}

// node returns the node with server name name.
func (c *shippedCluster) node(name string) *shippedNode {
	for _, n := range c.nodes {
		if n.name == name {
			return n
		}
	}
	c.t.Fatalf("no node %q", name)
	return nil
}

// jsz is the part of the monitoring /jsz answer the tests read.
type jsz struct {
	ServerName  string `json:"server_name"`
	MetaCluster *struct {
		Leader      string `json:"leader"`
		ClusterSize int    `json:"cluster_size"`
	} `json:"meta_cluster"`
}

// getJSON fetches an HTTPS monitoring URL of node n into v.
func (c *shippedCluster) getJSON(n *shippedNode, path string, v any) error {
	resp, err := c.https.Get(fmt.Sprintf("https://%s:%d%s", n.ip, n.httpsPort, path))
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return err
	}
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("%s: %s: %s", path, resp.Status, b)
	}
	return json.Unmarshal(b, v)
}

// waitMetaLeader polls every running node's /jsz until all name the same meta
// leader of a 3-node meta group.
func (c *shippedCluster) waitMetaLeader(timeout time.Duration) string {
	c.t.Helper()
	deadline := time.Now().Add(timeout)
	var last string
	for {
		leaders := map[string]bool{}
		ok := true
		for _, n := range c.nodes {
			var j jsz
			if err := c.getJSON(n, "/jsz", &j); err != nil {
				ok, last = false, n.name+": "+err.Error()
				break
			}
			if j.MetaCluster == nil || j.MetaCluster.Leader == "" || j.MetaCluster.ClusterSize != 3 {
				ok, last = false, fmt.Sprintf("%s: meta cluster %+v", n.name, j.MetaCluster)
				break
			}
			leaders[j.MetaCluster.Leader] = true
		}
		if ok && len(leaders) == 1 {
			for l := range leaders {
				return l
			}
		}
		if time.Now().After(deadline) {
			var logs strings.Builder
			for _, n := range c.nodes {
				fmt.Fprintf(&logs, "--- %s\n%s\n", n.name, tail(n.logs(), 3000))
			}
			c.t.Fatalf("no JetStream meta leader after %s (%s)\n%s", timeout, last, logs.String())
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// shippedCerts writes ca.crt, tls.crt and tls.key into dir as cert-manager lays
// out Secret nats-tls, and returns the CA file.
func shippedCerts(t *testing.T, dir string) string {
	t.Helper()
	caKey, caCert, caDER := newTestCA(t)
	var ips []net.IP
	dns := []string{"*.nats.nats.svc.cluster.local", "nats.nats.svc.cluster.local", "nats.nats.svc"}
	for i := 1; i <= 3; i++ {
		ips = append(ips, net.IPv4(127, 0, 0, byte(i)))
		dns = append(dns, fmt.Sprintf("127.0.0.%d", i))
	}
	writeLeaf(t, dir, "tls", caKey, caCert, "nats", dns, ips)
	caMu.Lock()
	caKeys[dir] = struct {
		key  *ecdsa.PrivateKey
		cert *x509.Certificate
	}{caKey, caCert}
	caMu.Unlock()
	t.Cleanup(func() { caMu.Lock(); delete(caKeys, dir); caMu.Unlock() })
	if err := os.WriteFile(filepath.Join(dir, "ca.crt"), pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: caDER}), 0o600); err != nil {
		t.Fatal(err)
	}
	return filepath.Join(dir, "ca.crt")
}

func newTestCA(t *testing.T) (*ecdsa.PrivateKey, *x509.Certificate, []byte) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "test cluster issuer"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour), IsCA: true,
		KeyUsage: x509.KeyUsageCertSign, BasicConstraintsValid: true}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return key, cert, der
}

// writeLeaf writes <name>.crt and <name>.key, a server+client certificate the
// CA issued for dns and ips.
func writeLeaf(t *testing.T, dir, name string, caKey *ecdsa.PrivateKey, ca *x509.Certificate, cn string, dns []string, ips []net.IP) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	serial, _ := rand.Int(rand.Reader, big.NewInt(1<<62))
	tmpl := &x509.Certificate{SerialNumber: serial, Subject: pkix.Name{CommonName: cn},
		DNSNames: dns, IPAddresses: ips,
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		KeyUsage:    x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &key.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, name+".crt"), pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, name+".key"), pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: keyDER}), 0o600); err != nil {
		t.Fatal(err)
	}
}

// provisionShipped runs `mailworker provision` as user provisioner with the
// shipped worker config (deploy/kubernetes/overlays/example/config.yaml, profile
// billing as in accounts.conf, streams.replicas 3)
// pointed at the cluster, as the runbook does, and returns the streams it
// reports (kind "stream" lines; KV and object stores are streams too:
// KV_<bucket>, OBJ_<bucket>).
func (c *shippedCluster) provisionShipped(t *testing.T) []string {
	t.Helper()
	cfg := shippedComponentConfig(t, "../../deploy/kubernetes/overlays/example/config.yaml", c.caFile)
	env := []string{"MAILWORKER_CONFIG=" + cfg, "MAILWORKER_NATS_URL=" + c.url(), "MAILWORKER_NATS_USER=provisioner",
		"MAILWORKER_NATS_INBOX_PREFIX=_INBOX_provisioner", "MAILWORKER_NATS_PASSWORD=" + shippedPassword("provisioner")}
	// A new cluster may still be placing its first assets: retry a few times.
	var out, errOut string
	var code int
	deadline := time.Now().Add(60 * time.Second)
	for {
		out, errOut, code = runCmdEnv(t, env, "", "provision")
		if code == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("provision exit %d:\n%s\n%s", code, out, errOut)
		}
		time.Sleep(500 * time.Millisecond)
	}
	streams, _ := parseProvisioned(out)
	if len(streams) == 0 {
		t.Fatalf("provision reported no streams:\n%s", out)
	}
	return streams
}

// parseProvisioned reads what `mailworker provision` reports having created:
// every stream (KV buckets and object stores are streams KV_<bucket> and
// OBJ_<bucket>) and every consumer as {stream, name}. Tests take names from
// it rather than from constants, so they follow the stream layout.
func parseProvisioned(out string) (streams []string, consumers [][2]string) {
	for _, line := range strings.Split(out, "\n") {
		f := strings.Fields(line)
		switch {
		case len(f) == 2 && f[0] == "stream":
			streams = append(streams, f[1])
		case len(f) == 4 && f[0] == "consumer" && f[2] == ">":
			consumers = append(consumers, [2]string{f[1], f[3]})
		case len(f) == 3 && f[0] == "KV" && f[1] == "bucket":
			streams = append(streams, "KV_"+f[2])
		case len(f) == 3 && f[0] == "object" && f[1] == "store":
			streams = append(streams, "OBJ_"+f[2])
		}
	}
	return streams, consumers
}

// shippedComponentConfig copies a shipped mailworker config, replacing only
// paths of files mounted in the pod: its nats.tls.caFile with the test CA and
// each old, new pair of paths. The URL and password come from MAILWORKER_NATS_*
// in the environment, as a pod may set them.
func shippedComponentConfig(t *testing.T, path, caFile string, pairs ...string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(b), "/var/run/secrets/nats-ca/ca.crt") {
		t.Errorf("%s: nats.tls.caFile is not the mounted nats-ca: the shipped NATS requires TLS", path)
	}
	s := strings.ReplaceAll(string(b), "/var/run/secrets/nats-ca/ca.crt", caFile)
	for i := 0; i+1 < len(pairs); i += 2 {
		s = strings.ReplaceAll(s, pairs[i], pairs[i+1])
	}
	out := filepath.Join(t.TempDir(), filepath.Base(path))
	if err := os.WriteFile(out, []byte(s), 0o600); err != nil {
		t.Fatal(err)
	}
	return out
}

// streamReplicas is what a stream's info says about its replicas.
type streamReplicas struct {
	Leader  string
	Current int // replicas other than the leader that are current
}

// r3 reports each named stream's leader and current followers, read through
// the support user's allowed stream info (JSON API, so no client library
// guesses are involved).
func (c *shippedCluster) streamsR3(t *testing.T, streams []string) map[string]streamReplicas {
	t.Helper()
	nc := c.connect(t, "provisioner")
	out := map[string]streamReplicas{}
	for _, s := range streams {
		msg, err := nc.Request("$JS.API.STREAM.INFO."+s, nil, minWait)
		if err != nil {
			t.Fatalf("stream info %s: %v", s, err)
		}
		var info struct {
			Config struct {
				Replicas int `json:"num_replicas"`
			} `json:"config"`
			Cluster *struct {
				Leader   string `json:"leader"`
				Replicas []struct {
					Name    string `json:"name"`
					Current bool   `json:"current"`
				} `json:"replicas"`
			} `json:"cluster"`
			Error *struct {
				Description string `json:"description"`
			} `json:"error"`
		}
		if err := json.Unmarshal(msg.Data, &info); err != nil {
			t.Fatal(err)
		}
		if info.Error != nil {
			t.Fatalf("stream info %s: %s", s, info.Error.Description)
		}
		r := streamReplicas{}
		if info.Config.Replicas != 3 {
			t.Errorf("stream %s has %d replicas, want 3 (streams.replicas in the shipped config)", s, info.Config.Replicas)
		}
		if info.Cluster != nil {
			r.Leader = info.Cluster.Leader
			for _, p := range info.Cluster.Replicas {
				if p.Current {
					r.Current++
				}
			}
		}
		out[s] = r
	}
	return out
}

// connect opens a TLS connection to the cluster as a user of accounts.conf,
// with that user's inbox prefix.
func (c *shippedCluster) connect(t *testing.T, user string) *nats.Conn {
	t.Helper()
	nc, err := nats.Connect(c.url(), nats.UserInfo(user, shippedPassword(user)), nats.RootCAs(c.caFile),
		nats.CustomInboxPrefix("_INBOX_"+user), nats.MaxReconnects(-1), nats.ReconnectWait(100*time.Millisecond),
		nats.ErrorHandler(func(*nats.Conn, *nats.Subscription, error) {}))
	if err != nil {
		t.Fatalf("connect as %s: %v", user, err)
	}
	t.Cleanup(nc.Close)
	return nc
}

// TestShippedNATSClusterForms starts the three nodes from deploy/nats as shipped
// (issue 17 item 9): they must elect a JetStream meta leader, and
// `mailworker provision` with the shipped worker config (replicas 3) must
// create every stream with a leader and two current followers. With the route
// password inside the route URLs (the config before the fix) each node ran
// alone and no meta leader was ever elected.
func TestShippedNATSClusterForms(t *testing.T) {
	t.Parallel()
	c := startShippedCluster(t)
	streams := c.provisionShipped(t)
	var last map[string]streamReplicas
	eventually(t, 30*time.Second, "every provisioned stream at R3 with a leader and 2 current followers", func() bool {
		last = c.streamsR3(t, streams)
		for _, r := range last {
			if r.Leader == "" || r.Current < 2 {
				return false
			}
		}
		return true
	})
	t.Logf("R3 streams: %v", last)
	for _, n := range c.nodes {
		if strings.Contains(n.logs(), "authentication error") || strings.Contains(n.logs(), "Authorization Violation") {
			t.Errorf("%s logged a route authentication failure:\n%s", n.name, tail(n.logs(), 2000))
		}
	}
}

// TestShippedNATSRoutesRefuseOtherCertificates: a route must present a
// certificate naming a route host. A node whose certificate, from the same CA,
// names another service (as the SMTP ingress's does) is refused, and so is a
// route without any certificate; the cluster keeps its 2 routes per node.
func TestShippedNATSRoutesRefuseOtherCertificates(t *testing.T) {
	t.Parallel()
	c := startShippedCluster(t)
	target := c.nodes[0]
	for _, tc := range []struct {
		name string
		cert bool
	}{{"certificate for another service", true}, {"no certificate", false}} {
		conf := &tls.Config{RootCAs: c.https.Transport.(*http.Transport).TLSClientConfig.RootCAs, ServerName: target.ip}
		if tc.cert {
			dir := t.TempDir()
			caKey, caCert := loadCA(t, c.certs)
			writeLeaf(t, dir, "smtp", caKey, caCert, "mailworker-smtp", []string{"smtp.mail.example.com", "mailworker-smtp.mail.svc"}, []net.IP{net.IPv4(127, 0, 0, 9)})
			pair, err := tls.LoadX509KeyPair(filepath.Join(dir, "smtp.crt"), filepath.Join(dir, "smtp.key"))
			if err != nil {
				t.Fatal(err)
			}
			conf.Certificates = []tls.Certificate{pair}
		}
		// Speak the route protocol: read INFO, upgrade to TLS, send CONNECT,
		// and expect the server to refuse the route.
		refused := dialRoute(t, fmt.Sprintf("%s:%d", target.ip, target.routePort), conf)
		if !refused {
			t.Errorf("%s: route accepted", tc.name)
		}
	}
	var routez struct {
		NumRoutes int `json:"num_routes"`
	}
	if err := c.getJSON(target, "/routez", &routez); err != nil {
		t.Fatal(err)
	}
	if routez.NumRoutes < 2 {
		t.Errorf("%s has %d routes, want its 2 peers", target.name, routez.NumRoutes)
	}
}

// loadCA returns the key and certificate of the test CA that issued the
// certificates in dir (the key stays in memory, as cert-manager keeps it in
// the issuer).
func loadCA(t *testing.T, dir string) (*ecdsa.PrivateKey, *x509.Certificate) {
	t.Helper()
	caMu.Lock()
	defer caMu.Unlock()
	k, ok := caKeys[dir]
	if !ok {
		t.Fatalf("no CA for %s", dir)
	}
	return k.key, k.cert
}

var (
	caMu   sync.Mutex
	caKeys = map[string]struct {
		key  *ecdsa.PrivateKey
		cert *x509.Certificate
	}{}
)

// dialRoute connects to a route port as a route would and reports whether the
// server refused it (an -ERR, or the connection closed before a PING/PONG).
func dialRoute(t *testing.T, addr string, conf *tls.Config) bool {
	t.Helper()
	raw, err := net.DialTimeout("tcp", addr, 3*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer raw.Close()
	_ = raw.SetDeadline(time.Now().Add(5 * time.Second))
	// nats-server starts the TLS handshake of a route before its INFO
	// (server/route.go createRoute).
	tc := tls.Client(raw, conf)
	if err := tc.Handshake(); err != nil {
		return true // refused during the handshake (no client certificate)
	}
	buf := make([]byte, 4096)
	if _, err := tc.Read(buf); err != nil {
		return true // closed before INFO: refused
	}
	connect := `CONNECT {"verbose":false,"pedantic":false,"tls_required":true,"name":"intruder","cluster":"mail","headers":true}` + "\r\nPING\r\n"
	if _, err := tc.Write([]byte(connect)); err != nil {
		return true
	}
	var got bytes.Buffer
	for {
		n, err := tc.Read(buf)
		got.Write(buf[:n])
		if strings.Contains(got.String(), "PONG") {
			return false
		}
		if strings.Contains(got.String(), "-ERR") || err != nil {
			return true
		}
	}
}
