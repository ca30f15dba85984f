// Command etcd is the real etcd server (go.etcd.io/etcd/server/v3/etcdmain), built at the
// version kube-apiserver's module graph selects, for Weft's Kubernetes test harness.
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() {
	etcdmain.Main(os.Args)
}
