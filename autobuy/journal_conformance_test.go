package autobuy_test

import (
	"testing"

	"github.com/quotastack/quotastack-go/autobuy"
	"github.com/quotastack/quotastack-go/autobuy/journaltest"
)

func TestMemoryJournalConformance(t *testing.T) {
	t.Parallel()
	journaltest.Run(t, func(*testing.T) autobuy.Journal { return autobuy.NewMemoryJournal(0) })
}
