package docs

import (
	"fmt"
	"os"
	"testing"

	"go.uber.org/goleak"

	"github.com/mailworker/mailworker/internal/toolcheck"
)

func TestMain(m *testing.M) {
	code := toolcheck.Main(m, "docs")
	if code == 0 {
		if err := goleak.Find(); err != nil {
			fmt.Fprintln(os.Stderr, "goleak:", err)
			code = 1
		}
	}
	os.Exit(code)
}
