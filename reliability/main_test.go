package reliability_test

import (
	"testing"

	"go.uber.org/goleak"
)

// TestMain fails the package if any goroutine outlives its tests: a hostile
// server must not leave a reader, a timer or a connection goroutine behind.
func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}
