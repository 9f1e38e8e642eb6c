package worker

import (
	"strconv"

	"github.com/mailworker/mailworker/queue/contract"
	"github.com/prometheus/client_golang/prometheus"
)

// Metrics are the worker's Prometheus metrics (namespace mailworker_). Every
// label value of a closed set is created up front so that dashboards and
// alerts see zeros rather than absent series.
type Metrics struct {
	Jobs              *prometheus.CounterVec   // profile, outcome, reason
	Retries           *prometheus.CounterVec   // profile, reason
	ThrottleDeferrals *prometheus.CounterVec   // profile, cause
	GraphRequests     *prometheus.CounterVec   // profile, status
	GraphThrottled    *prometheus.CounterVec   // profile
	SendDuration      *prometheus.HistogramVec // profile
	JobLatency        *prometheus.HistogramVec // profile
	TokenRequests     *prometheus.CounterVec   // profile, result
	Ambiguous         *prometheus.CounterVec   // profile
	InflightSends     prometheus.Gauge
	InflightJobs      prometheus.Gauge
	ReplicasLive      prometheus.Gauge
	CredentialExpiry  *prometheus.GaugeVec   // profile
	CredentialReloads *prometheus.CounterVec // profile, result
	CredentialStale   *prometheus.GaugeVec   // profile
	// TenantWideMailRoles is set by the binary from each token's roles claim.
	TenantWideMailRoles *prometheus.GaugeVec // profile
	// DraftsLeft counts drafts of dead-lettered jobs that could not be
	// deleted (draft delivery mode); `mailworker check` lists them.
	DraftsLeft *prometheus.CounterVec // profile
	// DraftLookups counts draft-mode sends decided by a look-up after an
	// earlier attempt may have sent the mail, by result (sent_items, gone,
	// draft: still a draft, sent now).
	DraftLookups *prometheus.CounterVec // profile, result
	// StateConflicts counts deliveries whose job state moved on under them
	// (a compare-and-set lost to another delivery or a replay): decided
	// again on the state as it is.
	StateConflicts *prometheus.CounterVec // profile
}

// NewMetrics creates the metrics, registers them with reg (nil: not
// registered) and pre-creates the label values of profiles.
func NewMetrics(reg prometheus.Registerer, profiles []string) *Metrics {
	const ns = "mailworker"
	m := &Metrics{
		Jobs: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Name: "jobs_total",
			Help: "Jobs finished, by profile, outcome (sent, dead_lettered, duplicate_suppressed) and reason."},
			[]string{"profile", "outcome", "reason"}),
		Retries: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Name: "retries_total",
			Help: "Retries scheduled after a failed send (each spends an attempt), by reason."},
			[]string{"profile", "reason"}),
		ThrottleDeferrals: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Name: "throttle_deferrals_total",
			Help: "Jobs put back without spending an attempt because of a mailbox limit, by cause (retry_after, pace, upload, recipients, concurrency, unavailable)."},
			[]string{"profile", "cause"}),
		GraphRequests: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Name: "graph_requests_total",
			Help: "sendMail requests by HTTP status (\"error\" when there was no response)."},
			[]string{"profile", "status"}),
		GraphThrottled: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Name: "graph_throttled_total",
			Help: "sendMail requests answered 429."}, []string{"profile"}),
		SendDuration: prometheus.NewHistogramVec(prometheus.HistogramOpts{Namespace: ns, Name: "send_duration_seconds",
			Help: "Duration of sendMail calls.", Buckets: prometheus.ExponentialBuckets(0.01, 2, 14)}, []string{"profile"}),
		JobLatency: prometheus.NewHistogramVec(prometheus.HistogramOpts{Namespace: ns, Name: "job_latency_seconds",
			Help: "Time from a job's publish to its outcome.", Buckets: prometheus.ExponentialBuckets(0.01, 2, 20)}, []string{"profile"}),
		TokenRequests: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Name: "token_requests_total",
			Help: "Token requests that went to Entra ID (cache misses), by result (ok, error)."}, []string{"profile", "result"}),
		Ambiguous: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Name: "ambiguous_sends_total",
			Help: "Sends whose outcome is unknown (timeout or 5xx after the request was written): the mail may have been delivered."},
			[]string{"profile"}),
		InflightSends: prometheus.NewGauge(prometheus.GaugeOpts{Namespace: ns, Name: "inflight_sends",
			Help: "sendMail requests in flight."}),
		InflightJobs: prometheus.NewGauge(prometheus.GaugeOpts{Namespace: ns, Name: "inflight_jobs",
			Help: "Jobs held by this replica (fetched, not yet acked)."}),
		ReplicasLive: prometheus.NewGauge(prometheus.GaugeOpts{Namespace: ns, Name: "replicas_live",
			Help: "Live worker replicas this replica shares the per-mailbox concurrency and pace with (itself included)."}),
		CredentialExpiry: prometheus.NewGaugeVec(prometheus.GaugeOpts{Namespace: ns, Name: "credential_expiry_timestamp_seconds",
			Help: "When the profile's certificate credential expires (unix seconds)."}, []string{"profile"}),
		CredentialReloads: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Name: "credential_reloads_total",
			Help: "Changes of the profile's certificate or secret file taken up without a restart (ok), or refused with the old credential kept (error)."},
			[]string{"profile", "result"}),
		CredentialStale: prometheus.NewGaugeVec(prometheus.GaugeOpts{Namespace: ns, Name: "credential_reload_failing",
			Help: "1 while the profile's certificate or secret file has changed but cannot be used, so the previous credential is still in use."},
			[]string{"profile"}),
		TenantWideMailRoles: prometheus.NewGaugeVec(prometheus.GaugeOpts{Namespace: ns, Name: "tenant_wide_mail_roles",
			Help: "Tenant-wide mail application permissions (Mail.*) in the profile's last access token: admin consent in Entra, which the Exchange RBAC scope does not restrict. Should be 0."},
			[]string{"profile"}),
		DraftsLeft: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Name: "drafts_left_total",
			Help: "Drafts of dead-lettered or expired jobs that could not be deleted and are left in the shared mailbox's Drafts (draft delivery mode; `mailworker check` lists them)."},
			[]string{"profile"}),
		DraftLookups: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Name: "draft_lookups_total",
			Help: "Draft-mode sends decided by looking the message up after an attempt that may have sent it, by result: sent_items (found sent, not sent again), gone (neither draft nor Sent Items copy long after the send: taken as sent)."},
			[]string{"profile", "result"}),
		StateConflicts: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Name: "state_conflicts_total",
			Help: "Deliveries whose job state moved on under them (their compare-and-set lost to another delivery of the job, e.g. after a paused broker node or a lagging replica): decided again on the state as it is."},
			[]string{"profile"}),
	}
	for _, p := range profiles {
		m.Jobs.WithLabelValues(p, string(contract.EventSent), "")
		m.Jobs.WithLabelValues(p, string(contract.EventDuplicateSuppressed), "")
		for _, r := range contract.Reasons {
			m.Jobs.WithLabelValues(p, string(contract.EventDeadLettered), string(r))
		}
		for _, r := range []contract.Reason{"", contract.ReasonAccessDenied, contract.ReasonAuthFailed, contract.ReasonInternal} {
			m.Retries.WithLabelValues(p, string(r))
		}
		for _, c := range ThrottleCauses {
			m.ThrottleDeferrals.WithLabelValues(p, string(c))
		}
		for _, s := range []string{"202", "400", "401", "403", "404", "413", "429", "500", "503", "504", "error"} {
			m.GraphRequests.WithLabelValues(p, s)
		}
		m.GraphThrottled.WithLabelValues(p)
		m.SendDuration.WithLabelValues(p)
		m.JobLatency.WithLabelValues(p)
		m.TokenRequests.WithLabelValues(p, "ok")
		m.TokenRequests.WithLabelValues(p, "error")
		m.Ambiguous.WithLabelValues(p)
		m.CredentialReloads.WithLabelValues(p, "ok")
		m.CredentialReloads.WithLabelValues(p, "error")
		m.CredentialStale.WithLabelValues(p)
		m.TenantWideMailRoles.WithLabelValues(p)
		m.DraftsLeft.WithLabelValues(p)
		m.DraftLookups.WithLabelValues(p, "sent_items")
		m.DraftLookups.WithLabelValues(p, "gone")
		m.StateConflicts.WithLabelValues(p)
	}
	if reg != nil {
		reg.MustRegister(m.Jobs, m.Retries, m.ThrottleDeferrals, m.GraphRequests, m.GraphThrottled,
			m.SendDuration, m.JobLatency, m.TokenRequests, m.Ambiguous, m.InflightSends, m.InflightJobs,
			m.ReplicasLive, m.CredentialExpiry, m.CredentialReloads, m.CredentialStale, m.TenantWideMailRoles,
			m.DraftsLeft, m.DraftLookups, m.StateConflicts)
	}
	return m
}

func statusLabel(status int) string {
	if status == 0 {
		return "error"
	}
	return strconv.Itoa(status)
}
