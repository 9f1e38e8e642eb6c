package contract

import (
	"errors"
	"testing"
)

// TestCheckTransition: state is monotonic — a terminal state is final
// within its generation, attempts and generations never go back, a replay
// (a new generation) may follow anything.
func TestCheckTransition(t *testing.T) {
	st := func(s State, attempts, gen int) JobState {
		return JobState{State: s, Attempts: attempts, Generation: gen}
	}
	for _, c := range []struct {
		name     string
		from, to JobState
		ok       bool
	}{
		{"first write", JobState{}, st(StateSending, 0, 0), true},
		{"sending to sent", st(StateSending, 0, 0), st(StateSent, 1, 0), true},
		{"sending to retrying", st(StateSending, 1, 0), st(StateRetrying, 2, 0), true},
		{"retrying to sending", st(StateRetrying, 2, 0), st(StateSending, 2, 0), true},
		{"sent to retrying", st(StateSent, 3, 0), st(StateRetrying, 3, 0), false},
		{"sent to sending", st(StateSent, 1, 0), st(StateSending, 1, 0), false},
		{"sent to sent again", st(StateSent, 1, 0), st(StateSent, 2, 0), false},
		{"sent to dead_lettered", st(StateSent, 1, 0), st(StateDeadLettered, 1, 0), false},
		{"dead_lettered to retrying", st(StateDeadLettered, 5, 0), st(StateRetrying, 5, 0), false},
		{"attempts going back", st(StateRetrying, 3, 0), st(StateSending, 1, 0), false},
		{"replay after a dead letter", st(StateDeadLettered, 5, 0), st(StateReplayed, 0, 1), true},
		{"replay after sent", st(StateSent, 1, 0), st(StateReplayed, 0, 1), true},
		{"generation going back", st(StateReplayed, 0, 2), st(StateSending, 0, 1), false},
		{"the replay's attempts start again", st(StateReplayed, 0, 1), st(StateSending, 0, 1), true},
	} {
		t.Run(c.name, func(t *testing.T) {
			err := CheckTransition(c.from, c.to)
			if c.ok && err != nil {
				t.Fatalf("refused: %v", err)
			}
			if !c.ok && !errors.Is(err, ErrNotMonotonic) {
				t.Fatalf("= %v, want ErrNotMonotonic", err)
			}
		})
	}
}
