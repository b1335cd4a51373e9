// Command retrybudget computes how many of the S3 requests that meet an
// outage of the object store fail for a minio-go client with its default
// retries, by outage length: the budget the cutover's restart window must
// stay within for 0 failed client requests (BENCHMARKS.md, cutover).
//
// minio-go v7.4.1 (retry.go newRetryTimer) makes MaxRetry = 10 attempts and
// waits, after attempt i, a uniform time in [0, min(1 s, 200 ms·2^i)]: at
// most 7.4 s from the first attempt to the last, 3.7 s on average. A
// request fails when all ten attempts fall inside the outage. Requests
// meet the outage at a uniform offset into it.
//
//	go run ./bench/retrybudget
package main

import (
	"flag"
	"fmt"
	"math/rand/v2"
)

func main() {
	n := flag.Int("n", 200000, "requests simulated per outage length")
	seed := flag.Uint64("seed", 1, "random seed (the same seed prints the same table)")
	flag.Parse()
	rng := rand.New(rand.NewPCG(*seed, *seed))
	waits := []float64{0.2, 0.4, 0.8, 1, 1, 1, 1, 1, 1} // seconds, the cap of each wait between the 10 attempts
	fmt.Println("| outage | requests meeting it that fail |")
	fmt.Println("|---:|---:|")
	for _, outage := range []float64{1, 1.5, 2, 2.5, 3, 4, 5, 6, 7} {
		failed := 0
		for range *n {
			offset := rng.Float64() * outage
			span := 0.0
			for _, w := range waits {
				span += rng.Float64() * w
			}
			if span < outage-offset {
				failed++
			}
		}
		fmt.Printf("| %.1f s | %.2f%% |\n", outage, 100*float64(failed)/float64(*n))
	}
}
