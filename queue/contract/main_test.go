package contract

import (
	"fmt"
	"os"
	"testing"

	"go.uber.org/goleak"

	"github.com/mailworker/mailworker/internal/toolcheck"
)

// TestMain reports the tests skipped for a missing tool (TestSchemaAjv
// without node and Ajv) and checks for leaked goroutines.
func TestMain(m *testing.M) {
	code := toolcheck.Main(m, "queue/contract")
	if code == 0 {
		if err := goleak.Find(); err != nil {
			fmt.Fprintln(os.Stderr, "goleak:", err)
			code = 1
		}
	}
	os.Exit(code)
}
