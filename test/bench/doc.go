// Package bench holds portcullis' benchmarks, run by `make bench`. Each one
// measures with and without portcullis in the same run and reports the
// ratio, so the figures compare like with like on whatever machine runs
// them.
package bench
