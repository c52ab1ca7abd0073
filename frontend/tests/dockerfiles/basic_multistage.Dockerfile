# syntax=docker/dockerfile:1
ARG GO_VERSION=1.22
# base is where everything starts
FROM golang:${GO_VERSION} AS Base
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download

FROM base AS build
COPY . .
RUN --mount=type=cache,target=/root/.cache/go-build go build -o /out/app ./cmd/app

FROM scratch
COPY --from=build /out/app /app
ENTRYPOINT ["/app"]
