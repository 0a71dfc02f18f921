package redislock

// AssessInfo exposes assessInfo to the tests.
var AssessInfo = assessInfo
