package main

// A stock Postfix (Debian's package, installed by .ci/run) as a null client
// relaying to `mailworker smtp` with STARTTLS and AUTH, as an operations team
// deploys it (issue 20 item 1, issue 19 items 4 and 5). Postfix keeps its
// defaults where it matters: smtp_destination_recipient_limit 50 splits a
// message's recipients across transactions.

import (
	"fmt"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"
)

// postfix is one Postfix instance in its own config and queue directories.
type postfix struct {
	t   *testing.T
	dir string // config_directory
	log string // maillog_file
}

// startPostfix starts a null client that relays everything to relay
// (host:port) with STARTTLS (the rig's certificate as CA) and AUTH; extra
// lines go to the end of main.cf.
func startPostfix(t *testing.T, relay, caFile, login, password string, extra ...string) *postfix {
	t.Helper()
	bin := needTool(t, "postfix")
	root, err := os.MkdirTemp("", "mailworker-postfix-")
	if err != nil {
		t.Fatal(err)
	}
	// Postfix's daemons run as user postfix: the directories must be
	// traversable by it.
	_ = os.Chmod(root, 0o755)
	p := &postfix{t: t, dir: filepath.Join(root, "etc"), log: filepath.Join(root, "maillog")}
	for _, d := range []string{p.dir, filepath.Join(root, "data"), filepath.Join(root, "queue")} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	// data_directory belongs to the postfix user (its lock files).
	pu, err := user.Lookup("postfix")
	if err != nil {
		t.Fatalf("user postfix: %v (the postfix package creates it)", err)
	}
	uid, _ := strconv.Atoi(pu.Uid)
	gid, _ := strconv.Atoi(pu.Gid)
	if err := os.Chown(filepath.Join(root, "data"), uid, gid); err != nil {
		t.Fatal(err)
	}
	master, err := os.ReadFile("/etc/postfix/master.cf")
	if err != nil {
		t.Fatal(err)
	}
	ca, _ := os.ReadFile(caFile)
	if err := os.WriteFile(filepath.Join(p.dir, "ca.pem"), ca, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(p.dir, "master.cf"), master, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(p.dir, "sasl_passwd"), fmt.Appendf(nil, "%s %s:%s\n", relayKey(relay), login, password), 0o600); err != nil {
		t.Fatal(err)
	}
	mainCF := fmt.Sprintf(`compatibility_level = 3.6
queue_directory = %[1]s/queue
data_directory = %[1]s/data
maillog_file = %[2]s
maillog_file_prefixes = %[1]s
mail_owner = postfix
setgid_group = postdrop
myhostname = postfix-ci.localdomain
mydestination =
local_transport = error:local delivery is disabled
alias_maps =
alias_database =
inet_interfaces = loopback-only
inet_protocols = ipv4
master_service_disable = inet
relayhost = %[3]s
smtp_tls_security_level = encrypt
smtp_tls_CAfile = %[4]s/ca.pem
smtp_sasl_auth_enable = yes
smtp_sasl_password_maps = texthash:%[4]s/sasl_passwd
smtp_sasl_security_options = noanonymous
smtp_sasl_tls_security_options = noanonymous
queue_run_delay = 1s
minimal_backoff_time = 1s
maximal_backoff_time = 2s
smtp_connect_timeout = 5s
`, root, p.log, relayKey(relay), p.dir) + strings.Join(extra, "\n")
	if err := os.WriteFile(filepath.Join(p.dir, "main.cf"), []byte(mainCF), 0o644); err != nil {
		t.Fatal(err)
	}
	// No chroot: the temp directories are not inside a chroot jail.
	p.run("postconf", "-c", p.dir, "-F", "*/*/chroot = n")
	p.run(bin, "-c", p.dir, "start")
	t.Cleanup(func() {
		_ = exec.Command(bin, "-c", p.dir, "stop").Run()
		_ = os.RemoveAll(root)
	})
	return p
}

func relayKey(relay string) string {
	host, port, _ := strings.Cut(relay, ":")
	return "[" + host + "]:" + port
}

func (p *postfix) run(name string, args ...string) {
	p.t.Helper()
	if out, err := exec.Command(name, args...).CombinedOutput(); err != nil {
		p.t.Fatalf("%s %v: %v\n%s", name, args, err, out)
	}
}

// sendmail injects msg through Postfix's sendmail(1) with the envelope
// recipients taken from the header (-t).
func (p *postfix) sendmail(from string, msg []byte) {
	p.t.Helper()
	cmd := exec.Command("/usr/sbin/sendmail", "-C", p.dir, "-f", from, "-t", "-i")
	cmd.Stdin = strings.NewReader(string(msg))
	if out, err := cmd.CombinedOutput(); err != nil {
		p.t.Fatalf("sendmail: %v\n%s", err, out)
	}
}

// maillog is what Postfix logged so far.
func (p *postfix) maillog() string {
	b, _ := os.ReadFile(p.log)
	return string(b)
}

// flush asks Postfix to retry its deferred mail now.
func (p *postfix) flush() { _ = exec.Command("/usr/sbin/postqueue", "-c", p.dir, "-f").Run() }

// postfixMail is a message to n recipients (all in To:, as a mailing
// application writes them), with a body of bodyBytes.
func postfixMail(subject string, n, bodyBytes int) ([]byte, []string) {
	rcpts := make([]string, n)
	for i := range rcpts {
		rcpts[i] = fmt.Sprintf("%s-%03d@example.com", subject, i)
	}
	var b strings.Builder
	fmt.Fprintf(&b, "From: Scanner <%s>\nTo: %s\nSubject: %s\nMessage-ID: <%s@postfix.rel.example>\n\n", smtpE2ESender, strings.Join(rcpts, ",\n "), subject, subject)
	line := strings.Repeat("0123456789", 7) + "\n"
	for b.Len() < bodyBytes {
		b.WriteString(line)
	}
	b.WriteString("end\n")
	return []byte(b.String()), rcpts
}

// reached counts, per recipient, the copies the fake Graph accepted of the
// mails with subject.
func (r *smtpRig) reached(subject string) map[string]int {
	got := map[string]int{}
	for _, m := range r.fake.Messages() {
		if m.Subject != subject {
			continue
		}
		for _, a := range slices.Concat(m.To, m.Cc, m.Bcc) {
			got[strings.ToLower(a)]++
		}
	}
	return got
}

// exactlyOnce waits until every recipient has one copy and checks no
// recipient has more, nor anyone else any.
func (r *smtpRig) exactlyOnce(t *testing.T, p *postfix, subject string, rcpts []string) {
	t.Helper()
	eventually(t, 120*time.Second, subject+": every recipient reached", func() bool {
		p.flush()
		return len(r.reached(subject)) >= len(rcpts)
	})
	got := r.reached(subject)
	for _, rc := range rcpts {
		if got[rc] != 1 {
			t.Fatalf("%s: %s got %d copies, want 1", subject, rc, got[rc])
		}
	}
	if len(got) != len(rcpts) {
		t.Fatalf("%s: %d addresses reached, want %d", subject, len(got), len(rcpts))
	}
}

func TestSMTPPostfixRelay(t *testing.T) {
	t.Parallel()
	r := startSMTPRigWith(t, "")
	p := startPostfix(t, r.addr, r.certPE, smtpE2EUser, smtpE2EPassword)

	for _, tc := range []struct {
		subject     string
		n, bodySize int
	}{
		{"pf60", 60, 2 << 10},      // two transactions (50 + 10)
		{"pf300", 300, 2 << 10},    // six transactions
		{"pflarge", 3, 2400 << 10}, // a large message (object store path)
	} {
		t.Run(tc.subject, func(t *testing.T) {
			msg, rcpts := postfixMail(tc.subject, tc.n, tc.bodySize)
			p.sendmail(smtpE2ESender, msg)
			r.exactlyOnce(t, p, tc.subject, rcpts)
		})
	}

	t.Run("broker stopped: Postfix defers, retries, delivered once", func(t *testing.T) {
		r.nats.stop()
		msg, rcpts := postfixMail("pfoutage", 60, 2<<10)
		p.sendmail(smtpE2ESender, msg)
		eventually(t, 60*time.Second, "Postfix deferring", func() bool {
			return strings.Contains(p.maillog(), "status=deferred")
		})
		r.nats.start()
		r.exactlyOnce(t, p, "pfoutage", rcpts)
	})

	log := p.maillog()
	if strings.Contains(log, "status=bounced") {
		t.Fatalf("Postfix bounced mail:\n%s", tail(log, 4000))
	}
	if n := strings.Count(log, "status=sent"); n < 2+6+1+2 {
		t.Fatalf("Postfix logged %d sent transactions, want at least 11:\n%s", n, tail(log, 4000))
	}
}
