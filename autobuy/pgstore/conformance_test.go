package pgstore_test

import (
	"testing"

	"github.com/quotastack/quotastack-go/autobuy"
	"github.com/quotastack/quotastack-go/autobuy/chargelogtest"
	"github.com/quotastack/quotastack-go/autobuy/journaltest"
)

func TestJournalConformance(t *testing.T) {
	t.Parallel()
	pool := testPool(t, 24)
	journaltest.Run(t, func(t *testing.T) autobuy.Journal { return newStore(t, pool).Journal() })
}

func TestChargeLogConformance(t *testing.T) {
	t.Parallel()
	pool := testPool(t, 24)
	chargelogtest.Run(t, func(t *testing.T) autobuy.ChargeLog { return newStore(t, pool).ChargeLog() })
}
