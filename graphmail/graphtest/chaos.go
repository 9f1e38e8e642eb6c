package graphtest

import (
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"strconv"
	"strings"
)

// Fault triggers for people, not only for tests (mailpit's chaos option is
// the model): a spec names what to break and how often, e.g.
//
//	sendMail=429:0.2,503:0.1            20% answered 429 (Retry-After 2), 10% 503, the rest sent
//	sendMail@billing@contoso.com=403    every send from that mailbox: 403 ErrorAccessDenied
//	sendMail=accept504                  the message is accepted, then 504 (a possible duplicate)
//	sendMail=503                        every send 503: retried until worker.maxAttempts, then
//	                                    dead-lettered attempts_exhausted
//
// `mailworker dev --fault SPEC` and `mailworker sandbox --fault SPEC` set
// them at start; PUT /_sandbox/faults (the spec as the body) changes them
// while running, DELETE /_sandbox/faults clears them, GET shows them.

// FaultKinds are the kinds a spec may name, and the fault each stands for.
var FaultKinds = map[string]Fault{
	"429":       {Status: http.StatusTooManyRequests, RetryAfter: "2"},
	"500":       {Status: http.StatusInternalServerError},
	"502":       {Status: http.StatusBadGateway},
	"503":       {Status: http.StatusServiceUnavailable},
	"504":       {Status: http.StatusGatewayTimeout},
	"accept504": {Status: http.StatusGatewayTimeout, AcceptThenFail: true},
	"400":       {Status: http.StatusBadRequest},
	"403":       {Status: http.StatusForbidden, Code: "ErrorAccessDenied", Message: "Access is denied. Check credentials and try again."},
	"404":       {Status: http.StatusNotFound, Code: "ErrorInvalidUser", Message: "The requested user is invalid."},
	"413":       {Status: http.StatusRequestEntityTooLarge},
	"reset":     {Reset: true},
}

// FaultSpec is a parsed spec: the faults of sendMail for Mailbox ("" = every
// mailbox), each with its own probability (they add up to at most 1).
type FaultSpec struct {
	Mailbox string  `json:"mailbox,omitempty"`
	Faults  []Fault `json:"faults"`
}

// ParseFaultSpec reads "sendMail[@mailbox]=kind[:probability][,kind[:probability]…]"
// (kinds: FaultKinds; probability 0 < p <= 1, default 1). It returns an error
// naming the part at fault.
func ParseFaultSpec(spec string) (FaultSpec, error) {
	target, list, ok := strings.Cut(strings.TrimSpace(spec), "=")
	if !ok || list == "" {
		return FaultSpec{}, fmt.Errorf("fault %q: want sendMail[@mailbox]=kind[:probability],… (kinds %s)", spec, kindNames())
	}
	op, mailbox, _ := strings.Cut(target, "@")
	if op != "sendMail" {
		return FaultSpec{}, fmt.Errorf("fault %q: %q is not a call that can fail here (sendMail)", spec, op)
	}
	fs := FaultSpec{Mailbox: strings.ToLower(mailbox)}
	total := 0.0
	for _, part := range strings.Split(list, ",") {
		kind, p, hasP := strings.Cut(strings.TrimSpace(part), ":")
		f, ok := FaultKinds[kind]
		if !ok {
			return FaultSpec{}, fmt.Errorf("fault %q: unknown kind %q (kinds %s)", spec, kind, kindNames())
		}
		f.Probability = 1
		if hasP {
			v, err := strconv.ParseFloat(p, 64)
			if err != nil || v <= 0 || v > 1 {
				return FaultSpec{}, fmt.Errorf("fault %q: probability %q: want a number above 0, at most 1", spec, p)
			}
			f.Probability = v
		}
		total += f.Probability
		fs.Faults = append(fs.Faults, f)
	}
	if total > 1.000001 {
		return FaultSpec{}, fmt.Errorf("fault %q: the probabilities add up to %.2f, over 1", spec, total)
	}
	return fs, nil
}

func kindNames() string {
	return "429 (Retry-After 2), 500, 502, 503, 504, accept504 (accepted, then 504), 400, 403 (ErrorAccessDenied), 404 (ErrorInvalidUser), 413, reset"
}

// SetFaultSpec applies fs: its faults replace those of its mailbox (or of
// every mailbox), each drawn with its own probability per sendMail.
func (s *Server) SetFaultSpec(fs FaultSpec) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.faultMix == nil {
		s.faultMix = map[string][]Fault{}
	}
	s.faultMix[strings.ToLower(fs.Mailbox)] = append([]Fault(nil), fs.Faults...)
}

// ClearFaultSpecs removes every fault set by SetFaultSpec.
func (s *Server) ClearFaultSpecs() {
	s.mu.Lock()
	s.faultMix = nil
	s.mu.Unlock()
}

// FaultSpecs returns the faults set by SetFaultSpec.
func (s *Server) FaultSpecs() []FaultSpec {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]FaultSpec, 0, len(s.faultMix))
	for mb, fs := range s.faultMix {
		out = append(out, FaultSpec{Mailbox: mb, Faults: append([]Fault(nil), fs...)})
	}
	return out
}

// mixFaultLocked draws one fault of key's mix (else the every-mailbox mix):
// nil when the draw falls outside every fault's share. Callers hold s.mu.
func (s *Server) mixFaultLocked(key string) *Fault {
	mix, ok := s.faultMix[key]
	if !ok {
		mix = s.faultMix[""]
	}
	if len(mix) == 0 {
		return nil
	}
	x, acc := rand.Float64(), 0.0
	for _, f := range mix {
		acc += f.Probability
		if x < acc {
			c := f
			return &c
		}
	}
	return nil
}

// handleFaults serves /_sandbox/faults: GET the faults, PUT a spec (the
// body, one per line), DELETE to clear.
func (s *Server) handleFaults(w http.ResponseWriter, r *http.Request) {
	switch r.Method {
	case http.MethodGet:
	case http.MethodDelete:
		s.ClearFaultSpecs()
	case http.MethodPut, http.MethodPost:
		b, err := io.ReadAll(io.LimitReader(r.Body, 64<<10))
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		var specs []FaultSpec
		for _, line := range strings.Split(string(b), "\n") {
			if line = strings.TrimSpace(line); line == "" {
				continue
			}
			fs, err := ParseFaultSpec(line)
			if err != nil {
				http.Error(w, err.Error(), http.StatusBadRequest)
				return
			}
			specs = append(specs, fs)
		}
		for _, fs := range specs {
			s.SetFaultSpec(fs)
		}
	default:
		w.Header().Set("Allow", "GET, PUT, DELETE")
		http.Error(w, "GET, PUT or DELETE", http.StatusMethodNotAllowed)
		return
	}
	writeJSON(w, http.StatusOK, s.FaultSpecs())
}
