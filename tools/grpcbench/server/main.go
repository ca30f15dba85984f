// Command grpc-health-server is the gRPC benchmark's backend: it answers
// grpc.health.v1.Health/Check with SERVING, with server reflection so a load generator can find
// the method, on the loopback address it is given. It prints the address it bound, then serves
// until killed.
package main

import (
	"flag"
	"fmt"
	"log"
	"net"
	"os"

	"google.golang.org/grpc"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/reflection"
)

func main() {
	addr := flag.String("listen", "127.0.0.1:0", "address to serve on (loopback)")
	flag.Parse()
	lis, err := net.Listen("tcp", *addr)
	if err != nil {
		log.Fatalf("listen %s: %v", *addr, err)
	}
	server := grpc.NewServer()
	status := health.NewServer()
	status.SetServingStatus("", healthpb.HealthCheckResponse_SERVING)
	healthpb.RegisterHealthServer(server, status)
	reflection.Register(server)
	fmt.Fprintln(os.Stdout, lis.Addr().String())
	if err := server.Serve(lis); err != nil {
		log.Fatal(err)
	}
}
