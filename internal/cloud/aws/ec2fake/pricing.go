package ec2fake

import (
	"encoding/json"
	"fmt"
	"net/http"
	"strconv"
)

// PricingHandler returns an http.Handler speaking the AWS Price List API's JSON protocol
// (AWSPriceListService.GetProducts, application/x-amz-json-1.1) over the fake's instance
// types: one Linux and one Windows product per type, shared tenancy, with the on-demand price
// (Windows at twice the price, so that a caller forgetting the operatingSystem filter shows).
// Its calls are counted under "GetProducts".
func (s *Server) PricingHandler() http.Handler {
	return http.HandlerFunc(s.servePricing)
}

type pricingFilter struct {
	Type, Field, Value string
}

type getProductsRequest struct {
	ServiceCode   string
	Filters       []pricingFilter
	FormatVersion string
	NextToken     string
	MaxResults    *int
}

func writeJSONError(w http.ResponseWriter, status int, code, msg string) {
	w.Header().Set("Content-Type", "application/x-amz-json-1.1")
	w.Header().Set("X-Amzn-ErrorType", code)
	w.WriteHeader(status)
	json.NewEncoder(w).Encode(map[string]string{"__type": code, "Message": msg})
}

func (s *Server) servePricing(w http.ResponseWriter, r *http.Request) {
	s.mu.Lock()
	s.calls["GetProducts"]++
	s.mu.Unlock()
	if t := r.Header.Get("X-Amz-Target"); t != "AWSPriceListService.GetProducts" {
		writeJSONError(w, http.StatusBadRequest, "UnknownOperationException", fmt.Sprintf("unknown operation %q", t))
		return
	}
	var req getProductsRequest
	if err := json.NewDecoder(r.Body).Decode(&req); err != nil {
		writeJSONError(w, http.StatusBadRequest, "SerializationException", err.Error())
		return
	}
	if req.ServiceCode != "AmazonEC2" {
		writeJSONError(w, http.StatusBadRequest, "InvalidParameterException", "Input for ServiceCode is invalid: "+req.ServiceCode)
		return
	}
	s.mu.Lock()
	types, region := append([]InstanceType(nil), s.types...), s.opts.Region
	s.mu.Unlock()
	var products []string
	for _, t := range types {
		for _, os := range []string{"Linux", "Windows"} {
			price := t.OnDemandPrice
			if os == "Windows" {
				price *= 2
			}
			attrs := map[string]string{
				"instanceType": t.Name, "regionCode": region, "location": "US East (N. Virginia)", "operatingSystem": os,
				"tenancy": "Shared", "preInstalledSw": "NA", "capacitystatus": "Used", "licenseModel": "No License required",
				"vcpu": strconv.Itoa(t.VCPU), "memory": fmt.Sprintf("%g GiB", float64(t.MemoryMiB)/1024),
			}
			if !pricingMatch(req.Filters, attrs) {
				continue
			}
			sku := fmt.Sprintf("SKU%s%s", os[:3], t.Name)
			doc := map[string]any{
				"product":     map[string]any{"productFamily": "Compute Instance", "sku": sku, "attributes": attrs},
				"serviceCode": "AmazonEC2",
				"terms": map[string]any{"OnDemand": map[string]any{
					sku + ".JRTCKXETXF": map[string]any{"sku": sku, "priceDimensions": map[string]any{
						sku + ".JRTCKXETXF.6YS6EN2CT7": map[string]any{"unit": "Hrs", "description": "per On Demand hour",
							"pricePerUnit": map[string]string{"USD": strconv.FormatFloat(price, 'f', -1, 64)}},
					}},
				}},
			}
			b, _ := json.Marshal(doc)
			products = append(products, string(b))
		}
	}
	start := 0
	if req.NextToken != "" {
		n, err := strconv.Atoi(req.NextToken)
		if err != nil || n < 0 || n > len(products) {
			writeJSONError(w, http.StatusBadRequest, "InvalidNextTokenException", "invalid NextToken")
			return
		}
		start = n
	}
	size := 100
	if req.MaxResults != nil {
		size = *req.MaxResults
	}
	if size < 1 || size > 100 {
		writeJSONError(w, http.StatusBadRequest, "InvalidParameterException", "MaxResults must be 1..100")
		return
	}
	end := min(start+size, len(products))
	resp := map[string]any{"FormatVersion": "aws_v1", "PriceList": products[start:end]}
	if end < len(products) {
		resp["NextToken"] = strconv.Itoa(end)
	}
	w.Header().Set("Content-Type", "application/x-amz-json-1.1")
	json.NewEncoder(w).Encode(resp)
}

func pricingMatch(filters []pricingFilter, attrs map[string]string) bool {
	for _, f := range filters {
		if v, ok := attrs[f.Field]; ok && v != f.Value {
			return false
		}
	}
	return true
}
