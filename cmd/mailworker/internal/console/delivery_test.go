package console

import "testing"

// TestDeliverySummary: the overview's per-profile delivery and bounce rates
// count settled recipients only (not sent, deferred, …).
func TestDeliverySummary(t *testing.T) {
	got := deliverySummary(map[string]int{"sent": 50, "delivered": 90, "bounced": 6, "quarantined": 3, "filtered_as_spam": 1, "deferred": 7})
	if want := "delivered 90.0% · bounced 6.0% of 100 recipients (message trace)"; got != want {
		t.Errorf("got %q, want %q", got, want)
	}
	if got := deliverySummary(map[string]int{"sent": 3}); got != "" {
		t.Errorf("no delivery events: got %q, want none", got)
	}
}
