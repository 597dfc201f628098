// Command junit-summary reads the JUnit report the ginkgo CLI writes (--junit-report) and prints
// how many specs passed, failed and were skipped, then the name of every failed spec, one a line.
// Suite-level nodes ([SynchronizedBeforeSuite], [ReportAfterSuite], ...) are not specs and are
// listed apart when they fail. hack/conformance.sh runs it.
//
// Usage: junit-summary REPORT.xml
package main

import (
	"encoding/xml"
	"fmt"
	"io"
	"os"
	"sort"
	"strings"
)

type report struct {
	Suites []struct {
		Cases []testcase `xml:"testcase"`
	} `xml:"testsuite"`
}

type testcase struct {
	Name    string    `xml:"name,attr"`
	Status  string    `xml:"status,attr"`
	Failure *struct{} `xml:"failure"`
	Error   *struct{} `xml:"error"`
	Skipped *struct{} `xml:"skipped"`
}

func main() {
	if err := run(os.Args[1:], os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "junit-summary:", err)
		os.Exit(1)
	}
}

func run(args []string, out io.Writer) error {
	if len(args) != 1 {
		return fmt.Errorf("usage: junit-summary REPORT.xml")
	}
	b, err := os.ReadFile(args[0])
	if err != nil {
		return err
	}
	var r report
	if err := xml.Unmarshal(b, &r); err != nil {
		return fmt.Errorf("parsing %s: %w", args[0], err)
	}
	var passed, skipped int
	var failed, suiteFailed []string
	for _, s := range r.Suites {
		for _, c := range s.Cases {
			suiteNode := !strings.HasPrefix(c.Name, "[It]") && strings.HasPrefix(c.Name, "[")
			bad := c.Failure != nil || c.Error != nil || c.Status == "failed" || c.Status == "panicked" ||
				c.Status == "interrupted" || c.Status == "aborted" || c.Status == "timedout"
			switch {
			case suiteNode && bad:
				suiteFailed = append(suiteFailed, c.Name)
			case suiteNode:
			case bad:
				failed = append(failed, strings.TrimPrefix(c.Name, "[It] "))
			case c.Skipped != nil || c.Status == "skipped" || c.Status == "pending":
				skipped++
			default:
				passed++
			}
		}
	}
	sort.Strings(failed)
	ran := passed + len(failed)
	fmt.Fprintf(out, "passed %d of %d run (failed %d); %d skipped or not selected\n", passed, ran, len(failed), skipped)
	for _, n := range suiteFailed {
		fmt.Fprintf(out, "suite node failed: %s\n", n)
	}
	for _, n := range failed {
		fmt.Fprintf(out, "FAILED %s\n", n)
	}
	return nil
}
