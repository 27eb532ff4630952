package main

import (
	"fmt"
	"net/http"
	"os"
)

func main() {
	http.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		fmt.Println(r.Method, r.URL.Path)
		fmt.Fprintf(w, "%s %s %s %s\n", NAME, os.Getenv("SDP_SANDBOX"), os.Getenv("SDP_BRANCH"), os.Getenv("SDP_COMMIT"))
	})
	if err := http.ListenAndServe(":"+os.Getenv("PORT"), nil); err != nil {
		fmt.Println(err)
		os.Exit(1)
	}
}
