package main

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"os/signal"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/mailworker/mailworker/queue/contract"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// bareCommand is the hidden subcommand that runs the bare baseline loop.
const bareCommand = "bare-worker"

// bareMain is the smallest loop that does the worker's essential work:
// consume a job, decode it, POST the same Graph JSON to sendMail with a token
// fetched once, ack, and say so on a core NATS subject (no status stream, no
// job state, no pacing, no metrics, no logs). It runs until SIGTERM.
func bareMain(args []string) error {
	fs := flag.NewFlagSet(bareCommand, flag.ContinueOnError)
	natsURL := fs.String("nats-url", "", "")
	stream := fs.String("stream", bareStream, "")
	consumer := fs.String("consumer", bareConsumer, "")
	done := fs.String("done", bareDone, "")
	graphURL := fs.String("graph-url", "", "")
	tokenURL := fs.String("token-url", "", "")
	caFile := fs.String("ca-file", "", "")
	client := fs.String("client-id", "", "")
	secretEnv := fs.String("client-secret-env", "", "")
	concurrency := fs.Int("concurrency", 64, "")
	if err := fs.Parse(args); err != nil {
		return err
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()

	pem, err := os.ReadFile(*caFile)
	if err != nil {
		return err
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pem) {
		return errors.New("no CA in " + *caFile)
	}
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.TLSClientConfig = &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}
	tr.MaxIdleConns, tr.MaxIdleConnsPerHost = 1024, 1024
	tr.ForceAttemptHTTP2 = true
	hc := &http.Client{Transport: tr}

	tok, err := fetchToken(ctx, hc, *tokenURL, *client, os.Getenv(*secretEnv))
	if err != nil {
		return err
	}
	nc, err := nats.Connect(*natsURL, nats.Name("loadtest-bare"))
	if err != nil {
		return err
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		return err
	}
	cons, err := js.Consumer(ctx, *stream, *consumer)
	if err != nil {
		return err
	}
	it, err := cons.Messages(jetstream.PullMaxMessages(min(max(*concurrency, 1), 256)))
	if err != nil {
		return err
	}
	go func() { <-ctx.Done(); it.Stop() }()

	prefix := strings.TrimRight(*graphURL, "/") + "/v1.0/users/"
	sem := make(chan struct{}, *concurrency)
	var wg sync.WaitGroup
	for {
		sem <- struct{}{}
		msg, err := it.Next()
		if err != nil {
			<-sem
			if errors.Is(err, jetstream.ErrMsgIteratorClosed) {
				break
			}
			continue
		}
		wg.Add(1)
		go func() {
			defer func() { <-sem; wg.Done() }()
			var job contract.Job
			if json.Unmarshal(msg.Data(), &job) != nil {
				_ = msg.Term()
				return
			}
			if bareSend(hc, prefix, tok, &job) {
				_ = msg.Ack()
				_ = nc.Publish(*done, []byte(job.ID))
			} else {
				_ = msg.NakWithDelay(time.Second)
			}
		}()
	}
	wg.Wait()
	return nc.Flush()
}

func fetchToken(ctx context.Context, hc *http.Client, tokenURL, clientID, secret string) (string, error) {
	form := url.Values{"grant_type": {"client_credentials"}, "client_id": {clientID}, "client_secret": {secret},
		"scope": {"https://graph.microsoft.com/.default"}}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, tokenURL, strings.NewReader(form.Encode()))
	if err != nil {
		return "", err
	}
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	resp, err := hc.Do(req)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	var body struct {
		AccessToken string `json:"access_token"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&body); err != nil || body.AccessToken == "" {
		return "", fmt.Errorf("token: %s %v", resp.Status, err)
	}
	return body.AccessToken, nil
}

// The same Graph JSON shape graphmail sends.
type (
	bareMail struct {
		Message         bareMessage `json:"message"`
		SaveToSentItems bool        `json:"saveToSentItems"`
	}
	bareMessage struct {
		Subject string       `json:"subject"`
		Body    bareBody     `json:"body"`
		To      []bareRcpt   `json:"toRecipients,omitempty"`
		Headers []bareHeader `json:"internetMessageHeaders,omitempty"`
	}
	bareBody struct {
		ContentType string `json:"contentType"`
		Content     string `json:"content"`
	}
	bareRcpt struct {
		EmailAddress struct {
			Name    string `json:"name,omitempty"`
			Address string `json:"address"`
		} `json:"emailAddress"`
	}
	bareHeader struct {
		Name  string `json:"name"`
		Value string `json:"value"`
	}
)

func bareSend(hc *http.Client, prefix, tok string, job *contract.Job) bool {
	_, from, err := contract.ParseAddress(job.From)
	if err != nil {
		from = job.From
	}
	m := bareMail{Message: bareMessage{Subject: job.Subject, Body: bareBody{ContentType: "Text", Content: job.Text},
		Headers: []bareHeader{{Name: "X-Mailworker-Job-Id", Value: job.ID}}}}
	for _, to := range job.To {
		var r bareRcpt
		name, addr, err := contract.ParseAddress(to)
		if err != nil {
			addr = to
		}
		r.EmailAddress.Name, r.EmailAddress.Address = name, addr
		m.Message.To = append(m.Message.To, r)
	}
	body, err := json.Marshal(m)
	if err != nil {
		return false
	}
	req, err := http.NewRequest(http.MethodPost, prefix+url.PathEscape(from)+"/sendMail", bytes.NewReader(body))
	if err != nil {
		return false
	}
	req.Header.Set("Authorization", "Bearer "+tok)
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Client-Request-Id", job.ID)
	resp, err := hc.Do(req)
	if err != nil {
		return false
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	_ = resp.Body.Close()
	return resp.StatusCode == http.StatusAccepted
}
