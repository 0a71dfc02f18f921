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
	require.NoError(t, run(context.Background(), &out, func(string) string { return "" }))
	for _, want := range []string{
		"Using the embedded fake QuotaStack",
		"Customer user_81 ready",
		`signup bonus, attempt 1: key "signup-grant:`,
		", replayed false",
		", replayed true",
		"Balance after the signup bonus: 25,000 mc in 1 block(s).",
		`webhook first_chat        key "action-grant:`,
		`:first_chat": granted`,
		`:profile_complete": granted`,
		`:invite_friend": granted`,
		`:invite_friend": already granted (a redelivery): replayed, nothing added`,
		"Balance after the action bonuses: 40,000 mc in 4 block(s).",
		"user_81: balance 40,000 mc, reserved 0 mc, effective 40,000 mc, lifetime earned 40,000 mc",
		"action=invite_friend",
		"bonus=signup",
	} {
		assert.Contains(t, out.String(), want)
	}
}
