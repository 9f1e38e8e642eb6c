package queue

import (
	"testing"
	"time"

	"github.com/mailworker/mailworker/queue/contract"
)

// TestReplayDraft: a replay keeps a draft whose send was attempted (it is
// looked up, never sent twice) and an unsent draft of an unchanged body (it
// is resumed); a fixed body gets a new draft.
func TestReplayDraft(t *testing.T) {
	at := time.Now()
	unsent := &contract.Draft{ID: "AAkALg1"}
	sent := &contract.Draft{ID: "AAkALg2", SendAt: &at}
	for _, tc := range []struct {
		name    string
		d       *contract.Draft
		newBody bool
		want    *contract.Draft
	}{
		{"no draft", nil, false, nil},
		{"draft being created", &contract.Draft{}, false, nil},
		{"unsent, same body: resumed", unsent, false, unsent},
		{"unsent, fixed body: a new draft", unsent, true, nil},
		{"send attempted, same body: looked up", sent, false, sent},
		{"send attempted, fixed body: still looked up", sent, true, sent},
	} {
		if got := replayDraft(tc.d, tc.newBody); got != tc.want {
			t.Errorf("%s: got %+v, want %+v", tc.name, got, tc.want)
		}
	}
}
