package main

import (
	"bytes"
	"context"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestStory(t *testing.T) {
	t.Parallel()
	var out bytes.Buffer
	require.NoError(t, run(context.Background(), &out, func(string) string { return "" }, false))
	for _, want := range []string{
		"Using the embedded fake QuotaStack",
		"plan.Buy failed half done (errors.Is(err, plan.ErrHalfDone) is true):",
		"wallet debited but plan not granted; call Buy again with order id \"ord_",
		"503 unavailable",
		"ana: wallet 150,000 mc, plan credits 0 mc",
		"finished: debit replayed true, grant replayed false, 50,000 mc of plan credits until",
		"ana: wallet 150,000 mc, plan credits 50,000 mc",
		"then the process died before the grant.",
		"bo: wallet 150,000 mc, plan credits 0 mc",
		"bo: wallet 150,000 mc, plan credits 50,000 mc",
		"the fake's ledger holds 1 debit and 1 grant for this order",
		"ana: balance 200,000 mc, reserved 0 mc, effective 200,000 mc, lifetime earned 300,000 mc",
		"bo: balance 200,000 mc, reserved 0 mc, effective 200,000 mc, lifetime earned 300,000 mc",
		`debit key "plan-debit:1hr:ord_`,
	} {
		assert.Contains(t, out.String(), want)
	}
	assert.Equal(t, 2, bytes.Count(out.Bytes(), []byte("the fake's ledger holds 1 debit and 1 grant")))
}
