// Command kipcheck is the end-to-end suites' probe inside pods: a static Go binary (its
// resolver reads the pod's /etc/resolv.conf itself, with no libc) that serves and fetches HTTP,
// looks up names and talks to the API server with in-cluster config, printing what it saw.
//
//	kipcheck serve ADDR            answer every HTTP request with the pod's hostname
//	kipcheck get URL [TIMEOUT]     fetch URL once; print the body; exit 1 with the error
//	kipcheck lookup NAME           print the addresses NAME resolves to, sorted, one per line
//	kipcheck api                   list this namespace's pods as in-cluster config would
//	kipcheck sleep                 wait for SIGTERM
package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/signal"
	"slices"
	"syscall"
	"time"
)

func main() {
	if len(os.Args) < 2 {
		fail(fmt.Errorf("usage: kipcheck serve|get|lookup|api|sleep ..."))
	}
	var err error
	switch args := os.Args[2:]; os.Args[1] {
	case "serve":
		err = serve(arg(args, 0, ":8080"))
	case "get":
		err = get(arg(args, 0, ""), arg(args, 1, "5s"))
	case "lookup":
		err = lookup(arg(args, 0, ""))
	case "api":
		err = api()
	case "sleep":
		ch := make(chan os.Signal, 1)
		signal.Notify(ch, syscall.SIGTERM, syscall.SIGINT)
		<-ch
	default:
		err = fmt.Errorf("unknown command %q", os.Args[1])
	}
	if err != nil {
		fail(err)
	}
}

func arg(args []string, i int, def string) string {
	if i < len(args) {
		return args[i]
	}
	return def
}

func fail(err error) {
	fmt.Fprintln(os.Stderr, "kipcheck:", err)
	os.Exit(1)
}

func serve(addr string) error {
	host, _ := os.Hostname()
	go func() {
		ch := make(chan os.Signal, 1)
		signal.Notify(ch, syscall.SIGTERM, syscall.SIGINT)
		<-ch
		os.Exit(0)
	}()
	return http.ListenAndServe(addr, http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		fmt.Fprintln(w, host)
	}))
}

func get(url, timeout string) error {
	if url == "" {
		return fmt.Errorf("get: no URL")
	}
	d, err := time.ParseDuration(timeout)
	if err != nil {
		return fmt.Errorf("get: timeout %q: %w", timeout, err)
	}
	c := &http.Client{Timeout: d, Transport: &http.Transport{DisableKeepAlives: true}}
	start := time.Now()
	resp, err := c.Get(url)
	if err != nil {
		return fmt.Errorf("after %v: %w", time.Since(start).Round(time.Millisecond), err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return err
	}
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("%s: %s: %s", url, resp.Status, body)
	}
	_, err = os.Stdout.Write(body)
	return err
}

func lookup(name string) error {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	addrs, err := net.DefaultResolver.LookupHost(ctx, name)
	if err != nil {
		return err
	}
	slices.Sort(addrs)
	for _, a := range addrs {
		fmt.Println(a)
	}
	return nil
}

// api does what client-go's in-cluster config does — KUBERNETES_SERVICE_HOST/PORT, the
// projected token and CA — and lists this namespace's pods.
func api() error {
	const sa = "/var/run/secrets/kubernetes.io/serviceaccount/"
	host, port := os.Getenv("KUBERNETES_SERVICE_HOST"), os.Getenv("KUBERNETES_SERVICE_PORT")
	if host == "" || port == "" {
		return fmt.Errorf("KUBERNETES_SERVICE_HOST/PORT are not set")
	}
	token, err := os.ReadFile(sa + "token")
	if err != nil {
		return err
	}
	ns, err := os.ReadFile(sa + "namespace")
	if err != nil {
		return err
	}
	caPEM, err := os.ReadFile(sa + "ca.crt")
	if err != nil {
		return err
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(caPEM) {
		return fmt.Errorf("no certificate in %sca.crt", sa)
	}
	c := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}}
	url := "https://" + net.JoinHostPort(host, port) + "/api/v1/namespaces/" + string(ns) + "/pods"
	req, err := http.NewRequest(http.MethodGet, url, nil)
	if err != nil {
		return err
	}
	req.Header.Set("Authorization", "Bearer "+string(token))
	resp, err := c.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	var list struct {
		Items []struct {
			Metadata struct {
				Name string `json:"name"`
			} `json:"metadata"`
		} `json:"items"`
	}
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return err
	}
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("GET %s: %s: %s", url, resp.Status, body)
	}
	if err := json.Unmarshal(body, &list); err != nil {
		return err
	}
	fmt.Printf("%s: %d pods\n", url, len(list.Items))
	for _, p := range list.Items {
		fmt.Println(p.Metadata.Name)
	}
	return nil
}
