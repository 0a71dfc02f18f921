package autobuy_test

import (
	"testing"

	"go.uber.org/goleak"
)

// TestMain fails the package if any goroutine outlives its tests: a gate,
// its purchase flights and its locks must all end.
func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}
