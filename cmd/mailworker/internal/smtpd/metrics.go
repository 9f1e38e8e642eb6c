package smtpd

import "github.com/prometheus/client_golang/prometheus"

// Auth failure reasons (label values of mailworker_smtp_auth_failures_total).
const (
	AuthUnknownUser      = "unknown_user"
	AuthBadPassword      = "bad_password"
	AuthSourceNotAllowed = "source_not_allowed"
	AuthMalformed        = "malformed"
	// AuthLockedOut: an attempt refused unchecked after too many failures
	// (on the connection or from the address).
	AuthLockedOut = "locked_out"
)

// refusalCodes are the reply codes the server refuses with (label values of
// mailworker_smtp_refused_total).
var refusalCodes = []string{"421", "450", "451", "452", "454", "530", "535", "550", "552", "554"}

// Metrics of the SMTP ingress, namespace mailworker, subsystem smtp.
type Metrics struct {
	Sessions        prometheus.Counter
	SessionsActive  prometheus.Gauge
	SessionsRefused prometheus.Counter
	AuthFailures    *prometheus.CounterVec // reason
	Accepted        *prometheus.CounterVec // profile
	Refused         *prometheus.CounterVec // code
	AcceptSeconds   prometheus.Histogram
	AcceptedBytes   prometheus.Histogram
	CredReloads     *prometheus.CounterVec // result

	SessionsRefusedPerAddress prometheus.Counter
	SessionsRefusedPerLogin   prometheus.Counter
	PreAuthTimeouts           prometheus.Counter
	AuthLockouts              *prometheus.CounterVec // scope: connection, address
	AuthCacheHits             prometheus.Counter
	RetriesMatched            prometheus.Counter
	RetryRecordFailures       prometheus.Counter
	RetryLookups              prometheus.Counter
	RetryRecordsWatched       *prometheus.GaugeVec // profile
	RateCountFailures         prometheus.Counter
}

// NewMetrics registers the metrics on reg, every label value of a closed set
// pre-created (profiles: the configured ones).
func NewMetrics(reg prometheus.Registerer, profiles []string) *Metrics {
	m := &Metrics{
		Sessions: prometheus.NewCounter(prometheus.CounterOpts{Namespace: "mailworker", Subsystem: "smtp", Name: "sessions_total",
			Help: "SMTP connections accepted."}),
		SessionsActive: prometheus.NewGauge(prometheus.GaugeOpts{Namespace: "mailworker", Subsystem: "smtp", Name: "sessions_active",
			Help: "SMTP connections open now."}),
		SessionsRefused: prometheus.NewCounter(prometheus.CounterOpts{Namespace: "mailworker", Subsystem: "smtp", Name: "sessions_refused_total",
			Help: "SMTP connections refused with 421 because smtp.maxSessions were open."}),
		AuthFailures: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: "mailworker", Subsystem: "smtp", Name: "auth_failures_total",
			Help: "Failed SMTP AUTH attempts, by reason."}, []string{"reason"}),
		Accepted: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: "mailworker", Subsystem: "smtp", Name: "accepted_total",
			Help: "Messages accepted (250 after the JetStream publish ack), by profile."}, []string{"profile"}),
		Refused: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: "mailworker", Subsystem: "smtp", Name: "refused_total",
			Help: "SMTP commands refused by this server, by reply code."}, []string{"code"}),
		AcceptSeconds: prometheus.NewHistogram(prometheus.HistogramOpts{Namespace: "mailworker", Subsystem: "smtp", Name: "accept_seconds",
			Help:    "Time from the end of DATA to the durable accept (JetStream publish ack, object store write included).",
			Buckets: []float64{.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10}}),
		AcceptedBytes: prometheus.NewHistogram(prometheus.HistogramOpts{Namespace: "mailworker", Subsystem: "smtp", Name: "accepted_bytes",
			Help:    "Size of accepted messages.",
			Buckets: prometheus.ExponentialBuckets(1024, 4, 8)}),
		CredReloads: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: "mailworker", Subsystem: "smtp", Name: "credential_reloads_total",
			Help: "Re-reads of a changed smtp.credentialsFile, by result (error: the previous credentials stay)."}, []string{"result"}),
	}
	m.SessionsRefusedPerAddress = prometheus.NewCounter(prometheus.CounterOpts{Namespace: "mailworker", Subsystem: "smtp", Name: "sessions_refused_per_address_total",
		Help: "SMTP connections refused with 421 because smtp.maxSessionsPerAddress were open from that address (also in sessions_refused_total)."})
	m.SessionsRefusedPerLogin = prometheus.NewCounter(prometheus.CounterOpts{Namespace: "mailworker", Subsystem: "smtp", Name: "sessions_refused_per_login_total",
		Help: "SMTP logins refused with 421 because smtp.maxSessionsPerLogin sessions of that login were open."})
	m.PreAuthTimeouts = prometheus.NewCounter(prometheus.CounterOpts{Namespace: "mailworker", Subsystem: "smtp", Name: "preauth_timeouts_total",
		Help: "SMTP connections closed because they had not logged in within smtp.preAuthTimeout."})
	m.AuthLockouts = prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: "mailworker", Subsystem: "smtp", Name: "auth_lockouts_total",
		Help: "AUTH attempts refused unchecked after too many failures, by scope (connection, address)."}, []string{"scope"})
	m.AuthCacheHits = prometheus.NewCounter(prometheus.CounterOpts{Namespace: "mailworker", Subsystem: "smtp", Name: "auth_cache_hits_total",
		Help: "Logins accepted from the verified-credential cache (no bcrypt)."})
	m.RetriesMatched = prometheus.NewCounter(prometheus.CounterOpts{Namespace: "mailworker", Subsystem: "smtp", Name: "retries_matched_total",
		Help: "Submissions recognised as the retry of one whose answer the client may not have seen (the same job id)."})
	m.RetryRecordFailures = prometheus.NewCounter(prometheus.CounterOpts{Namespace: "mailworker", Subsystem: "smtp", Name: "retry_record_failures_total",
		Help: "Retry records that could not be written: a retry of that submission may be sent twice."})
	m.RetryLookups = prometheus.NewCounter(prometheus.CounterOpts{Namespace: "mailworker", Subsystem: "smtp", Name: "retry_lookups_total",
		Help: "Submissions whose retry record was looked up in the object store because this replica's watched copy of the records was not loaded (normally 0)."})
	m.RetryRecordsWatched = prometheus.NewGaugeVec(prometheus.GaugeOpts{Namespace: "mailworker", Subsystem: "smtp", Name: "retry_records_watched",
		Help: "1 when this replica's copy of the profile's retry records is loaded and kept current by the broker (0: each submission looks its record up)."}, []string{"profile"})
	for _, p := range profiles {
		m.RetryRecordsWatched.WithLabelValues(p)
	}
	m.RateCountFailures = prometheus.NewCounter(prometheus.CounterOpts{Namespace: "mailworker", Subsystem: "smtp", Name: "rate_count_failures_total",
		Help: "MAIL FROM whose shared per-login count (smtp.messagesPerMinute) could not be updated in the broker: counted on this replica alone."})
	reg.MustRegister(m.SessionsRefusedPerAddress, m.SessionsRefusedPerLogin, m.PreAuthTimeouts, m.AuthLockouts, m.AuthCacheHits, m.RetriesMatched, m.RetryRecordFailures, m.RetryLookups,
		m.RetryRecordsWatched, m.RateCountFailures)
	m.AuthLockouts.WithLabelValues("connection")
	m.AuthLockouts.WithLabelValues("address")
	reg.MustRegister(m.Sessions, m.SessionsActive, m.SessionsRefused, m.AuthFailures, m.Accepted, m.Refused,
		m.AcceptSeconds, m.AcceptedBytes, m.CredReloads)
	for _, r := range []string{AuthUnknownUser, AuthBadPassword, AuthSourceNotAllowed, AuthMalformed, AuthLockedOut} {
		m.AuthFailures.WithLabelValues(r)
	}
	for _, p := range profiles {
		m.Accepted.WithLabelValues(p)
	}
	for _, c := range refusalCodes {
		m.Refused.WithLabelValues(c)
	}
	m.CredReloads.WithLabelValues("ok")
	m.CredReloads.WithLabelValues("error")
	return m
}
