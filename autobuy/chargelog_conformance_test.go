package autobuy_test

import (
	"testing"

	"github.com/quotastack/quotastack-go/autobuy"
	"github.com/quotastack/quotastack-go/autobuy/chargelogtest"
)

func TestMemoryChargeLogConformance(t *testing.T) {
	t.Parallel()
	chargelogtest.Run(t, func(*testing.T) autobuy.ChargeLog { return autobuy.NewMemoryChargeLog(0) })
}
