// Package reliability holds the SDK's reliability tests: a fault soak of
// concurrent auto-buy gates against quotastacktest that checks nothing is
// lost or charged twice, fuzz targets for customer paths and response
// decoding, and hostile-server tests. It has no non-test code.
package reliability
