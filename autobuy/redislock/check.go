package redislock

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
)

// ErrEvictionRisk is returned by NewJournal when the Redis server may evict
// the journal's keys: its maxmemory-policy evicts (volatile-* evicts keys
// with a TTL, such as closed intents and suspensions; allkeys-* any key) and
// maxmemory is set. An evicted intent can charge a customer twice or leave a
// debit without its grant. Set maxmemory-policy to noeviction, use a
// dedicated Redis, or keep the journal in PostgreSQL (autobuy/pgstore);
// WithEvictionRiskAccepted overrides the refusal.
var ErrEvictionRisk = errors.New("redislock: the Redis server may evict the journal's keys")

// WithEvictionRiskAccepted lets NewJournal use a Redis server whose
// maxmemory-policy may evict the journal's keys (see ErrEvictionRisk); the
// risk is logged at start-up, as a warning, to the journal's logger.
func WithEvictionRiskAccepted() JournalOption {
	return func(j *Journal) { j.check.acceptEviction = true }
}

// WithJournalLogger sets where NewJournal's check of the server reports what
// it found (default slog.Default(): those warnings are about money).
func WithJournalLogger(l *slog.Logger) JournalOption { return func(j *Journal) { j.check.log = l } }

// serverCheck is what NewJournal checks of the Redis server at start-up.
type serverCheck struct {
	acceptEviction bool
	log            *slog.Logger
}

// maxInfo bounds the INFO answer NewJournal reads.
const maxInfo = 1 << 20

// checkServer reads INFO (memory and persistence) once, bounded by the
// journal's timeout. It returns ErrEvictionRisk unless accepted, and logs
// warnings; what the server doesn't tell (INFO refused, a Redis-compatible
// server without those fields, no answer) is logged and not refused.
func (j *Journal) checkServer() error {
	log := j.check.log
	if log == nil {
		log = slog.Default()
	}
	ctx, cancel := context.WithTimeout(context.Background(), j.timeout)
	defer cancel()
	var info string
	err := j.call(ctx, func(ctx context.Context) (err error) {
		info, err = j.rdb.Info(ctx).Result()
		return err
	})
	if err != nil {
		log.Warn("redislock: journal: could not read the Redis server's INFO to check eviction and persistence", "error", err)
		return nil
	}
	risk, warnings := assessInfo(info)
	for _, w := range warnings {
		log.Warn("redislock: journal: " + w)
	}
	if risk == "" {
		return nil
	}
	if j.check.acceptEviction {
		log.Warn("redislock: journal: " + risk + "; accepted with WithEvictionRiskAccepted: an evicted intent can charge twice or leave a debit without its grant")
		return nil
	}
	return fmt.Errorf("%w: %s (set maxmemory-policy noeviction, or WithEvictionRiskAccepted)", ErrEvictionRisk, risk)
}

// assessInfo reads an INFO answer: risk is why journal keys may be evicted
// ("" if they can't be, or the answer doesn't tell), warnings the rest.
func assessInfo(info string) (risk string, warnings []string) {
	if len(info) > maxInfo {
		info = info[:maxInfo]
	}
	fields := map[string]string{}
	for line := range strings.SplitSeq(info, "\n") {
		k, v, ok := strings.Cut(strings.TrimSpace(line), ":")
		if ok && !strings.HasPrefix(k, "#") {
			fields[k] = v
		}
	}
	policy, hasPolicy := fields["maxmemory_policy"]
	maxmem := fields["maxmemory"]
	switch {
	case !hasPolicy:
		warnings = append(warnings, "the server's INFO names no maxmemory_policy: check that it never evicts the journal's keys (noeviction)")
	case policy == "noeviction":
	case maxmem == "0":
		warnings = append(warnings, "maxmemory-policy is "+policy+": keys are evicted as soon as a maxmemory is set (now 0, no limit); set noeviction")
	default:
		risk = "maxmemory-policy is " + policy + " with maxmemory " + maxmem + " bytes: the journal's keys may be evicted"
	}
	switch aof, ok := fields["aof_enabled"]; {
	case !ok:
		warnings = append(warnings, "the server's INFO doesn't tell whether AOF persistence is on")
	case aof == "0":
		warnings = append(warnings, "AOF persistence is off: a restart or a failover to a replica that lags loses the journal's "+
			"writes since the last snapshot (a debit may then never get its grant); turn on appendonly, or keep the journal in PostgreSQL")
	}
	return risk, warnings
}
