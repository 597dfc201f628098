package ec2fake

import (
	"slices"
	"sort"
	"strings"
)

type imageXML struct {
	ImageID        string      `xml:"imageId"`
	ImageLocation  string      `xml:"imageLocation"`
	ImageState     string      `xml:"imageState"`
	ImageOwnerID   string      `xml:"imageOwnerId"`
	CreationDate   string      `xml:"creationDate"`
	IsPublic       bool        `xml:"isPublic"`
	Architecture   string      `xml:"architecture"`
	ImageType      string      `xml:"imageType"`
	Name           string      `xml:"name"`
	RootDeviceType string      `xml:"rootDeviceType"`
	RootDeviceName string      `xml:"rootDeviceName"`
	Virtualization string      `xml:"virtualizationType"`
	BlockDevices   []imgBDMXML `xml:"blockDeviceMapping>item"`
	Tags           []tagXML    `xml:"tagSet>item"`
}

type imgBDMXML struct {
	DeviceName string `xml:"deviceName"`
	Ebs        struct {
		SnapshotID          string `xml:"snapshotId"`
		VolumeSize          int    `xml:"volumeSize"`
		DeleteOnTermination bool   `xml:"deleteOnTermination"`
		VolumeType          string `xml:"volumeType"`
	} `xml:"ebs"`
}

type describeImagesResponse struct {
	header
	Images    []imageXML `xml:"imagesSet>item"`
	NextToken string     `xml:"nextToken,omitempty"`
}

func (s *Server) describeImages(q query) (any, *apiError) {
	ids, owners := q.list("ImageId"), q.list("Owner")
	for _, id := range ids {
		if !strings.HasPrefix(id, "ami-") {
			return nil, errorf("InvalidAMIID.Malformed", "Invalid id: %q (expecting \"ami-...\")", id)
		}
		if s.images[id] == nil {
			return nil, errorf("InvalidAMIID.NotFound", "The image id '[%s]' does not exist", id)
		}
	}
	var match []imageXML
	for _, id := range sortedKeys(s.images) {
		img := s.images[id]
		if len(ids) > 0 && !slices.Contains(ids, id) {
			continue
		}
		if len(owners) > 0 && !slices.Contains(owners, img.owner) && !(slices.Contains(owners, "self") && img.owner == OwnerID) {
			continue
		}
		ok, err := matchAll(q.filters(), img.tags, map[string]string{"image-id": img.id, "name": img.name, "owner-id": img.owner,
			"architecture": img.arch, "state": "available", "root-device-type": "ebs", "virtualization-type": "hvm", "is-public": "true"})
		if err != nil {
			return nil, err
		}
		if !ok {
			continue
		}
		x := imageXML{ImageID: img.id, ImageLocation: img.owner + "/" + img.name, ImageState: "available", ImageOwnerID: img.owner,
			CreationDate: img.created, IsPublic: true, Architecture: img.arch, ImageType: "machine", Name: img.name,
			RootDeviceType: "ebs", RootDeviceName: img.rootDevice, Virtualization: "hvm", Tags: tagsXML(img.tags)}
		var b imgBDMXML
		b.DeviceName, b.Ebs.SnapshotID, b.Ebs.VolumeSize, b.Ebs.DeleteOnTermination, b.Ebs.VolumeType =
			img.rootDevice, "snap-"+strings.TrimPrefix(img.id, "ami-"), img.sizeGiB, true, "gp3"
		x.BlockDevices = []imgBDMXML{b}
		match = append(match, x)
	}
	// EC2 returns images in no promised order; shuffle-free but not sorted by date, so that
	// callers must pick the newest themselves.
	sort.Slice(match, func(i, j int) bool { return match[i].Name < match[j].Name })
	pg, next, err := page(q, match, 5, 1000)
	if err != nil {
		return nil, err
	}
	return &describeImagesResponse{Images: pg, NextToken: next}, nil
}
