FROM alpine
ADD onlyone
