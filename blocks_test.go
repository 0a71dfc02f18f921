package quotastack_test

import (
	"context"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/quotastack/quotastack-go"
	"github.com/quotastack/quotastack-go/quotastacktest"
)

// A customer with 10,000 wallet blocks (about 2 MiB of JSON, twice the
// general body cap) can still be read with its blocks; the block list has a
// cap of its own, which still refuses a larger body.
func TestBalanceWithTenThousandBlocks(t *testing.T) {
	t.Parallel()
	srv := quotastacktest.Start(t)
	const n = 10_000
	for i := range n {
		_, err := srv.Grant("hoarder", quotastacktest.BlockSpec{Credits: int64(i + 1)})
		require.NoError(t, err)
	}
	ctx := context.Background()
	cust := quotastack.ExternalID("hoarder")

	b, err := srv.Client().BalanceWithBlocks(ctx, cust)
	require.NoError(t, err)
	require.Len(t, b.Blocks, n)
	assert.Equal(t, int64(n*(n+1)/2), b.WalletMC())
	assert.Equal(t, b.Balance, b.WalletMC())

	// The general cap still applies to everything else...
	small := srv.Client(quotastack.WithMaxBodyBytes(256))
	_, err = small.BalanceWithBlocks(ctx, cust)
	require.NoError(t, err, "the block list's own cap, not the general one")
	// ...and the block list's cap bounds what is read and decoded.
	capped := srv.Client(quotastack.WithMaxBlocksBodyBytes(1 << 20))
	_, err = capped.BalanceWithBlocks(ctx, cust)
	require.ErrorIs(t, err, quotastack.ErrUnexpectedResponse)
	require.ErrorContains(t, err, "size limit")

	_, err = quotastack.NewClient(testKey, quotastack.WithMaxBlocksBodyBytes(-1))
	require.ErrorIs(t, err, quotastack.ErrInvalidInput)
}
